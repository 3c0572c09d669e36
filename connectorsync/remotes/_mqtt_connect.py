"""Connecting an :class:`~connectorsync.remotes.mqtt.MQTTRemote` to its broker: the paho
client (credentials, TLS, last will, session), the CONNECT, and what a CONNACK means.

Sessions, by QoS:

- QoS 0 and 1: a clean session on a new client each time (MQTT 5 ``clean_start``, 3.1.1
  ``clean_session``): nothing is resent by a session; the cache is the session, and what was
  not acknowledged is sent again by the pass.
- QoS 2: exactly once into the broker needs the broker to remember the packet ids in flight
  across a reconnect. The remote keeps one paho client for its life: its first connection
  starts a clean session that outlives the connection (MQTT 5: Session Expiry Interval
  :data:`~._mqtt_settings.SESSION_EXPIRY`; 3.1.1: ``clean_session=False``, after a clean
  connection that clears what a former process left under the same client id), and every
  reconnect resumes it, so paho sends each unfinished message again by its packet id (a
  PUBLISH marked DUP, or the PUBREL) and the broker, which drops a packet id it holds, stores
  each once (``tests/test_mqtt_qos.py::test_qos2_a_lost_pubcomp_stores_nothing_twice``).

Errors: credentials refused at connect (CONNACK 0x86, 0x87, 0x8A, 0x8C) raise
:class:`~connectorsync.errors.AuthError`; a broker that cannot be reached, refuses, is busy
or unavailable, or whose certificate fails verification,
:class:`~connectorsync.errors.TransientRemoteError`.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import AuthError, ConfigurationError, RemoteError, TransientRemoteError
from ._mqtt_session import Session, close_sockets, describe, new_client
from ._mqtt_settings import SESSION_EXPIRY, Address, Will

if TYPE_CHECKING:
    from paho.mqtt.client import Client

log = logging.getLogger("connectorsync.remotes.mqtt")

# CONNACK reason codes (MQTT 5; paho maps 3.1.1's 4 and 5 onto 0x86 and 0x87).
_CONNACK_AUTH = {0x86, 0x87, 0x8A, 0x8C}  # bad credentials, not authorized, banned, auth method
_CONNACK_TRANSIENT = {0x88, 0x89, 0x97, 0x9F}  # unavailable, busy, quota, connection rate


class Connector:
    """Makes connections to one broker with one set of settings (see the module)."""

    def __init__(  # noqa: PLR0913 - a connection's settings, all keyword-only
        self,
        mqtt: Any,
        address: Address,
        *,
        client_id: str,
        protocol: str,
        username: str | None,
        password: str | None,
        verify: bool | str,
        timeout: float,
        keepalive: int,
        max_inflight: int,
        will: Will | None,
        persistent: bool,
    ) -> None:
        self._mqtt, self.address = mqtt, address
        self.client_id, self.v5 = client_id, protocol == "5"
        self._username, self._password, self._verify = username, password, verify
        self.timeout, self.keepalive, self.max_inflight = timeout, keepalive, max_inflight
        self.will, self.persistent = will, persistent

    def connect(
        self,
        *,
        resume: Client | None,
        closed: Callable[[], bool],
        expose: Callable[[Session], None],
    ) -> Session:
        """A connected session: on ``resume`` (a persistent session's client, reconnected),
        or on a new client. ``expose`` gets the session before the CONNECT is sent, so that
        ``close()`` from another thread can end the wait; ``closed()`` says it was called.

        :raises AuthError: credentials refused (CONNACK)
        :raises TransientRemoteError: no connection, no CONNACK in time, a busy broker
        :raises RemoteError: another refusal
        """
        if resume is None and self.persistent and not self.v5:
            # 3.1.1 cannot start a session that outlives its connection and is new: a clean
            # connection first ends whatever a former process left under this client id.
            clearing = self._client(clean=True, will=False)
            self._open(clearing, closed, expose, clean=True).close(polite=True)
        client = resume or self._client(clean=not self.persistent)
        return self._open(client, closed, expose, clean=resume is None)

    def _client(self, *, clean: bool, will: bool = True) -> Client:
        mqtt = self._mqtt
        kwargs: dict[str, Any] = {"client_id": self.client_id}
        if self.v5:
            kwargs["protocol"] = mqtt.MQTTv5
        else:
            kwargs.update(protocol=mqtt.MQTTv311, clean_session=clean)
        client = new_client(mqtt, **kwargs)
        client.connect_timeout = self.timeout
        client.max_inflight_messages = self.max_inflight
        if self._username is not None:
            client.username_pw_set(self._username, self._password)
        if will and self.will is not None:
            last = self.will
            client.will_set(last.topic, last.payload.encode(), qos=last.qos, retain=last.retain)
        if self.address.tls:
            verify = self._verify
            context = ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)
            if verify is False:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            client.tls_set_context(context)
        return client

    def _open(
        self,
        client: Client,
        closed: Callable[[], bool],
        expose: Callable[[Session], None],
        *,
        clean: bool,
    ) -> Session:
        session = Session(client)
        expose(session)
        where = f"MQTT {self.address.url}"
        extra: dict[str, Any] = {}
        if self.v5:
            extra["clean_start"] = clean
            if self.persistent:
                from paho.mqtt.packettypes import PacketTypes
                from paho.mqtt.properties import Properties

                properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                properties.SessionExpiryInterval = SESSION_EXPIRY
                extra["properties"] = properties
        try:
            client.connect(self.address.host, self.address.port, keepalive=self.keepalive, **extra)
        except ssl.SSLCertVerificationError as exc:
            close_sockets(exc)
            raise TransientRemoteError(
                f"{where}: TLS certificate verification failed ({exc.verify_message}); "
                "give the broker's CA file as verify="
            ) from None
        except (OSError, ssl.SSLError) as exc:
            close_sockets(exc)
            raise TransientRemoteError(f"{where}: cannot connect: {describe(exc)}") from None
        except ValueError as exc:  # paho's own checks (a client id too long for 3.1.1)
            raise ConfigurationError(f"{where}: {exc}") from None
        if closed() or not session.pump(self.timeout, until=session.connacked):
            session.close()
            why = "closed the connection" if session.lost else f"did not answer in {self.timeout} s"
            if closed():
                raise TransientRemoteError(f"{where}: close() ended the connecting; nothing sent")
            raise TransientRemoteError(f"{where}: the broker {why} (no CONNACK)")
        code = session.connack or 0
        if code >= 0x80:
            text = session.reason_text(code)
            session.close()
            message = f"{where}: connection refused: {code:#04x} {text}"
            if code in _CONNACK_AUTH:
                raise AuthError(f"{message} (check the username and password)", status=code)
            cls = TransientRemoteError if code in _CONNACK_TRANSIENT else RemoteError
            raise cls(message, status=code)
        log.debug("connected to %s as %s", self.address.url, self.client_id)
        return session
