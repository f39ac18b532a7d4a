"""The certificate identity check, as a gRPC server interceptor (installed with mutual TLS).

TLS already proved that the client holds a certificate of the configured CA. This interceptor adds
what TLS cannot know: that the party a request claims to come from (the sender in a stream header,
announcement or hello) is the party the certificate names (its common name or a DNS subject
alternative name), and that the certificate is not revoked by the CRL. Handlers behind it can trust
the claimed sender's name.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc

__all__ = ["CertificateIdentityInterceptor", "certificate_names"]

logger = logging.getLogger(__name__)


def certificate_names(context: grpc.ServicerContext) -> set[str]:
    """The names the client's certificate gives its holder: common name and subject alternative names."""
    auth = context.auth_context()
    names = {v.decode("utf-8", "replace") for v in auth.get("x509_common_name", [])}
    names |= {v.decode("utf-8", "replace") for v in auth.get("x509_subject_alternative_name", [])}
    return names


class CertificateIdentityInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]  # grpc ships no types
    """Refuses (PERMISSION_DENIED) a call whose certificate is revoked or does not name the party that
    the call's first request message claims to come from.

    ``claimed_party(method, first_message)`` reads the claim (None: the message is malformed, and the
    handler refuses it with the reason; LookupError: a method it does not know, refused here); ``revoked`` holds the
    CRL's serial numbers. ``me`` names this
    party in log lines."""

    def __init__(self, claimed_party: Callable[[str, Any], str | None], revoked: set[int], me: str = "") -> None:
        self._claimed_party = claimed_party
        self._revoked = revoked
        self._me = me
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def intercept_service(self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        method = details.method
        if handler.unary_unary is not None:
            inner_unary = handler.unary_unary

            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                self._check(method, request, context)
                return inner_unary(request, context)

            return grpc.unary_unary_rpc_method_handler(
                unary, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
            )
        if handler.stream_unary is not None:
            inner_stream = handler.stream_unary

            def stream(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
                first = next(requests, None)
                if first is None:  # an empty stream claims nobody: the handler refuses it
                    return inner_stream(iter(()), context)
                self._check(method, first, context)
                return inner_stream(itertools.chain((first,), requests), context)

            return grpc.stream_unary_rpc_method_handler(
                stream, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
            )

        # Fail closed: a kind of method the identity check cannot read a claim from is refused.
        def refuse(request: Any, context: grpc.ServicerContext) -> Any:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{method}: no certificate identity check exists for this kind of method; refused",
            )

        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                refuse, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
            )
        return grpc.stream_stream_rpc_method_handler(
            refuse, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )

    def _check(self, method: str, first: Any, context: grpc.ServicerContext) -> None:
        names = certificate_names(context)
        if self._revoked:
            from cryptography import x509

            for pem in context.auth_context().get("x509_pem_cert", []):
                if x509.load_pem_x509_certificate(pem).serial_number in self._revoked:
                    context.abort(grpc.StatusCode.PERMISSION_DENIED, f"certificate of {sorted(names)} is revoked (CRL)")
        try:
            claimed = self._claimed_party(method, first)
        except LookupError:  # a method the check does not know: fail closed
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{method}: no certificate identity check for this method")
        if claimed is None:
            return
        if claimed not in names:
            logger.warning("[%s] refused a call claiming to be '%s' from certificate %s", self._me, claimed, sorted(names))
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"certificate names {sorted(names)} do not include the claimed sender {claimed!r}",
            )
        with self._lock:
            first_contact = claimed not in self._seen
            self._seen.add(claimed)
        if first_contact:
            logger.info("[%s] '%s' connected with certificate names %s", self._me, claimed, sorted(names))
