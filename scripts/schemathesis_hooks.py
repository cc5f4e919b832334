"""schemathesis hooks for scripts/schemathesis: tus sends its bytes as
`application/offset+octet-stream`, which schemathesis does not know; it is
sent like `application/octet-stream`."""

import schemathesis
from schemathesis.transport.serialization import serialize_binary


@schemathesis.serializer("application/offset+octet-stream")
def tus_bytes(ctx, value):
    return {"data": serialize_binary(value)}
