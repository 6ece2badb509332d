"""The original sample's FastAPI client, recreated for the benchmark from its documented
behaviour (../shared/reference/original-sample.md §1.2): one AsyncDurableTaskSchedulerClient
built in the lifespan, `POST /api/start-operation` starting `async_http_api_orchestrator` with
the operation id as instance id and answering 200 `{operation_id, status_url}`, and
`GET /api/operations/{id}` reading the state.

Usage: sample_client.py <port>   (ENDPOINT and TASKHUB from the environment, no credential:
the sample only goes credential-less for a local endpoint.)
Runs uvicorn with one process, as `uvicorn.run(app, ...)` in the sample does.
"""
import json
import os
import sys
import uuid
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from durabletask.azuremanaged.client import AsyncDurableTaskSchedulerClient

ENDPOINT = os.getenv("ENDPOINT", "http://localhost:8080")
TASKHUB = os.getenv("TASKHUB", "default")

client = None


@asynccontextmanager
async def lifespan(app: FastAPI):
    global client
    client = AsyncDurableTaskSchedulerClient(
        host_address=ENDPOINT.removeprefix("http://"),
        secure_channel=False,
        taskhub=TASKHUB,
        token_credential=None,
    )
    yield
    await client.close()


app = FastAPI(title="Durable Task Async HTTP API Sample", lifespan=lifespan)


class OperationRequest(BaseModel):
    processing_time: int = 5


class OperationResponse(BaseModel):
    operation_id: str
    status_url: str


@app.post("/api/start-operation", response_model=OperationResponse)
async def start_operation(request: OperationRequest):
    operation_id = str(uuid.uuid4())
    await client.schedule_new_orchestration(
        "async_http_api_orchestrator",
        input={"operation_id": operation_id, "processing_time": request.processing_time},
        instance_id=operation_id,
    )
    return OperationResponse(operation_id=operation_id, status_url=f"/api/operations/{operation_id}")


@app.get("/api/operations/{operation_id}")
async def get_operation_status(operation_id: str):
    state = await client.get_orchestration_state(operation_id)
    if state is None:
        raise HTTPException(status_code=404, detail=f"Operation {operation_id} not found")
    if state.runtime_status.name == "COMPLETED":
        try:
            result = json.loads(state.serialized_output) if state.serialized_output else None
        except ValueError:
            result = state.serialized_output
        return {"operation_id": operation_id, "status": "Completed", "result": result}
    if state.runtime_status.name == "FAILED":
        return {"operation_id": operation_id, "status": "Failed", "error": str(state.failure_details)}
    return {
        "operation_id": operation_id,
        "status": str(state.runtime_status.name),
        "last_updated": state.last_updated_at,
    }


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
