"""The demo function: greets whoever the payload names."""


def handler(event, context):
    name = (event or {}).get("name", "world")
    print(f"greeting {name}")  # goes to the function's logs, not the response
    return {
        "message": f"Hello, {name}!",
        "request_id": context.request_id,
        "remaining_ms": context.get_remaining_time_in_millis(),
    }
