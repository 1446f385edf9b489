from fastapi import APIRouter

router = APIRouter(prefix="/v1/batches", tags=["batches"])
