from fastapi import APIRouter

router = APIRouter(prefix="/v1/webhook-endpoints", tags=["webhooks"])
