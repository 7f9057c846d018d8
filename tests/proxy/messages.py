"""Building request/response frames with kio, for playbook tests of the exchange."""

from __future__ import annotations

from typing import Any

from kio.schema.request_header.v1.header import RequestHeader as RequestHeaderV1
from kio.schema.request_header.v2.header import RequestHeader as RequestHeaderV2
from kio.schema.response_header.v0.header import ResponseHeader as ResponseHeaderV0
from kio.schema.response_header.v1.header import ResponseHeader as ResponseHeaderV1
from kio.static.primitive import i16, i32

from proxy.codec.apis import ApiKey
from proxy.codec.framing import frame
from proxy.codec.messages import encode


def request_frame(payload: Any, correlation_id: int, client_id: str | None = "test") -> bytes:
    header_type = RequestHeaderV2 if payload.__flexible__ else RequestHeaderV1
    header = header_type(
        request_api_key=i16(payload.__api_key__),
        request_api_version=i16(payload.__version__),
        correlation_id=i32(correlation_id),
        client_id=client_id,
    )
    return frame(encode(header) + encode(payload))


def response_frame(payload: Any, correlation_id: int) -> bytes:
    flexible = payload.__flexible__ and payload.__api_key__ != ApiKey.API_VERSIONS
    header_type = ResponseHeaderV1 if flexible else ResponseHeaderV0
    return frame(encode(header_type(correlation_id=i32(correlation_id))) + encode(payload))
