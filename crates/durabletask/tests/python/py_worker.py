"""An official-SDK Python worker (durabletask-azuremanaged, no credential) for interop tests.

Registers `py_greeting_sequence`, which calls activity `py_greet` for three names, and the
original sample's `async_http_api_orchestrator` / `process_long_running_operation` pair.
Prints READY once started and runs until stdin closes.
"""
import sys
import time

from durabletask import task
from durabletask.azuremanaged.worker import DurableTaskSchedulerWorker


def py_greet(ctx: task.ActivityContext, name: str) -> str:
    return f"Hello {name} from Python"


def py_greeting_sequence(ctx: task.OrchestrationContext, names: list):
    results = []
    for n in names:
        results.append((yield ctx.call_activity(py_greet, input=n)))
    return results


def process_long_running_operation(ctx: task.ActivityContext, input_data: dict) -> dict:
    # As the original sample's worker.py: a blocking sleep, then this exact shape.
    operation_id = input_data.get("operation_id", "unknown")
    time.sleep(input_data.get("processing_time", 5))
    return {
        "operation_id": operation_id,
        "status": "completed",
        "result": f"Operation {operation_id} completed successfully",
        "processed_at": time.time(),
    }


def async_http_api_orchestrator(ctx: task.OrchestrationContext, input_data: dict):
    result = yield ctx.call_activity(process_long_running_operation, input=input_data)
    return result


def main() -> None:
    address = sys.argv[1]
    taskhub = sys.argv[2] if len(sys.argv) > 2 else "default"
    worker = DurableTaskSchedulerWorker(
        host_address=address, taskhub=taskhub, token_credential=None, secure_channel=False
    )
    worker.add_orchestrator(py_greeting_sequence)
    worker.add_activity(py_greet)
    worker.add_orchestrator(async_http_api_orchestrator)
    worker.add_activity(process_long_running_operation)
    worker.start()
    print("READY", flush=True)
    try:
        sys.stdin.read()
    finally:
        worker.stop()


if __name__ == "__main__":
    main()
