"""The API's OpenAPI contract beyond what routes declare: security, generic error responses,
webhook event payloads. The response models themselves live in ``shared.schemas``."""
