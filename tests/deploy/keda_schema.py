"""JSON schemas for the KEDA custom resources we use (keda.sh/v1alpha1 ScaledObject and
TriggerAuthentication), written from KEDA 2.x's documented CRD fields. kubernetes-validate
knows only built-in kinds, so these are checked here; unknown fields are errors, as they would
be under `kubectl apply --validate=strict` with the CRDs installed.

Per-trigger metadata keys: KEDA's documented parameters of the redis (list) and postgresql
scalers, and the parameters each accepts from a TriggerAuthentication.
"""

from __future__ import annotations

_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "namespace": {"type": "string"},
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
    },
}
_INT0 = {"type": "integer", "minimum": 0}

SCALED_OBJECT = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string"},
                        "kind": {"type": "string"},
                        "apiVersion": {"type": "string"},
                        "envSourceContainerName": {"type": "string"},
                    },
                },
                "pollingInterval": _INT0,
                "cooldownPeriod": _INT0,
                "initialCooldownPeriod": _INT0,
                "idleReplicaCount": _INT0,
                "minReplicaCount": _INT0,
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "fallback": {
                    "type": "object",
                    "required": ["failureThreshold", "replicas"],
                    "additionalProperties": False,
                    "properties": {
                        "failureThreshold": {"type": "integer", "minimum": 1},
                        "replicas": _INT0,
                        "behavior": {"enum": ["static", "currentReplicas", "currentReplicasIfHigher",
                                              "currentReplicasIfLower"]},
                    },
                },
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "name": {"type": "string"},
                                # autoscaling/v2 HorizontalPodAutoscalerBehavior: checked
                                # against the Kubernetes schema by the test.
                                "behavior": {"type": "object"},
                            },
                        },
                        "scalingModifiers": {"type": "object"},
                    },
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "metadata": _STRING_MAP,
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "useCachedMetrics": {"type": "boolean"},
                            "authenticationRef": {
                                "type": "object",
                                "required": ["name"],
                                "additionalProperties": False,
                                "properties": {
                                    "name": {"type": "string"},
                                    "kind": {"enum": ["TriggerAuthentication", "ClusterTriggerAuthentication"]},
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}

_SECRET_TARGET = {
    "type": "object",
    "required": ["parameter", "name", "key"],
    "additionalProperties": False,
    "properties": {"parameter": {"type": "string"}, "name": {"type": "string"}, "key": {"type": "string"}},
}
TRIGGER_AUTHENTICATION = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "TriggerAuthentication"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "minProperties": 1,
            "properties": {
                "secretTargetRef": {"type": "array", "minItems": 1, "items": _SECRET_TARGET},
                "env": {"type": "array"},
                "podIdentity": {"type": "object"},
                "hashiCorpVault": {"type": "object"},
                "azureKeyVault": {"type": "object"},
                "awsSecretManager": {"type": "object"},
                "gcpSecretManager": {"type": "object"},
                "configMapTargetRef": {"type": "array"},
                "boundServiceAccountToken": {"type": "array"},
            },
        },
    },
}

SCHEMAS = {"ScaledObject": SCALED_OBJECT, "TriggerAuthentication": TRIGGER_AUTHENTICATION}

# Scaler -> (metadata keys it documents, parameters it takes from a TriggerAuthentication,
#            metadata it requires)
SCALERS = {
    "redis": (
        {"address", "addressFromEnv", "host", "hostFromEnv", "port", "portFromEnv", "username",
         "usernameFromEnv", "passwordFromEnv", "listName", "listLength", "activationListLength",
         "databaseIndex", "enableTLS", "unsafeSsl"},
        {"address", "host", "port", "username", "password", "tls", "ca", "cert", "key", "keyPassword"},
        {"listName", "listLength"},
    ),
    "postgresql": (
        {"query", "targetQueryValue", "activationTargetQueryValue", "connectionFromEnv", "host", "port",
         "userName", "dbName", "sslmode", "passwordFromEnv"},
        {"connection", "password", "host", "port", "userName", "dbName", "sslmode"},
        {"query", "targetQueryValue"},
    ),
}
