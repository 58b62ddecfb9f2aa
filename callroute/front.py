"""The callroute front's flows (seed "交互流程", MISSION section 5).

- ``wxjoinconf``: SSRC and stream names, then StartPull on the conference's
  gateway (a new conference goes to the least-loaded healthy one).
- ``wxreqvideo``: StartPush of the member's video (``weixin``: the member is
  a mini-program on that gateway) unless it is already pushed; the watcher
  plays ``<play-base>/<video token>``.
- ``wxreqavsync``: as ``wxreqvideo``, then AvSync puts that video into the
  watcher's mix stream (its ``pullaudiourl``).
- ``wxcancelvideo``: the watcher stops watching; AvSync is cleared if it
  pointed at that member; StopPush when nobody watches any more.
- ``wxquitconf``: StopPull and everything the member watched or was watched by.

Operations on one conference are serialized by :meth:`Rooms.hold
<callroute.rooms.Rooms.hold>` (a lock in this process, a lease across fronts
with Redis). State changes are saved first, so the stream names they issue
are valid before the gateway uses them, and undone when a gateway call
fails, so a failed request leaves neither a half-joined member nor an orphan
leg: a start that failed at the transport (the gateway may have started it)
is followed by its stop. ``wxquitconf`` always removes the member; stops that
fail are logged (``orphan_leg``) since a member must be able to leave a dead
gateway. A store that does not answer fails the request (117) at its first
read, before any gateway call.

Every member here is a mini-program (the front knows no other members), so
StartPush always says ``weixin``. In a room without MAS (``mas`` is None)
the join reply's ``audioip``/``videoip`` are the gateway's host and its
ports 0: the media stays inside wxmgw.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from callroute.config import GatewayAddress, MasAddress
from callroute.gateways import Gateways
from callroute.mcs import GatewayApi
from callroute.protocol import (
    CallrouteError,
    GatewayUnavailable,
    JoinResult,
    Method,
    NotJoined,
    Request,
    StoreUnavailable,
    UnknownConference,
    UnknownMember,
    VideoRef,
    video_result,
)
from callroute.rooms import Conference, Member, Push, Rooms
from wxmgw.logs import event

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FrontConfig:
    push_base: str
    """How wxmgw and mini-programs reach the live server to publish (and wxmgw to pull)."""
    play_base: str
    """How mini-programs reach the live server to play."""
    mas: MasAddress | None = None


class Front:
    """Handles validated requests; raises :class:`CallrouteError` for a failure reply."""

    def __init__(
        self,
        config: FrontConfig,
        rooms: Rooms,
        gateways: Gateways,
        connect: Callable[[GatewayAddress], GatewayApi],
    ) -> None:
        self.config = config
        self.rooms = rooms
        self.gateways = gateways
        self._connect = connect

    def handle(self, req: Request) -> dict[str, Any]:
        """The ``result`` of a successful request."""
        with self.rooms.hold(req.conf_id):
            if req.method is Method.JOIN:
                return self._join(req)
            if req.method is Method.QUIT:
                self._quit(req)
                return {}
            assert req.video is not None
            if req.method is Method.CANCEL_VIDEO:
                self._cancel(req, req.video)
                return video_result(req.video, None)
            return video_result(req.video, self._request_video(req, req.video))

    def _url(self, base: str, token: str) -> str:
        return f"{base.rstrip('/')}/{token}"

    def start_pull(self, api: GatewayApi, conf: Conference, member: Member) -> None:
        """StartPull of a member: its stream to the MAS (or the room's mixer), its mix back."""
        mas = self.config.mas
        api.start_pull(
            uuid=member.uuid, conf_id=conf.conf_id, ssrc=member.ssrc,
            pull_url=self._url(self.config.push_base, member.token),
            mas_ip=mas.audio_ip if mas else "",
            audio_port=mas.audio_port if mas else 0,
            video_port=mas.video_port if mas else 0,
            push_audio_url=self._url(self.config.push_base, member.mix_token),
        )

    def start_push(
        self, api: GatewayApi, conf: Conference, push: Push, watcher: str
    ) -> tuple[int, int]:
        """StartPush of a member's video (a mini-program on that gateway: ``weixin``)."""
        return api.start_push(
            uuid=push.uuid, conf_id=conf.conf_id, req_uuid=watcher,
            push_url=self._url(self.config.push_base, push.token), weixin=True,
        )

    def gateway_api(self, name: str) -> GatewayApi:
        """The Thrift client of gateway ``name``."""
        return self._connect(self.gateways.address(name))

    def _gateway(self, conf: Conference) -> tuple[GatewayAddress, GatewayApi]:
        address = self.gateways.address(conf.gateway)
        return address, self._connect(address)

    @contextmanager
    def _reporting(self, conf: Conference) -> Iterator[None]:
        """A transport failure takes the gateway out of the choice for new conferences."""
        try:
            yield
        except GatewayUnavailable as exc:
            self.gateways.mark_down(conf.gateway, str(exc))
            raise

    def _join(self, req: Request) -> dict[str, str]:
        conf = self.rooms.get(req.conf_id)
        if conf is None:
            conf = self.rooms.open(req.conf_id, self.gateways.pick())
        address, api = self._gateway(conf)
        member = self.rooms.join(conf, req.uuid, req.crgwid)
        self.rooms.save(conf)
        mas = self.config.mas
        try:
            with self._reporting(conf):
                self.start_pull(api, conf, member)
        except CallrouteError as exc:
            self.rooms.leave(conf, member.uuid)
            self._undo(conf, exc)
            if isinstance(exc, GatewayUnavailable):
                self._stop(conf, api, "StopPull", member.uuid, api.stop_pull)
            raise
        event(logger, "joined", confId=conf.conf_id, uuid=member.uuid, ssrc=member.ssrc,
              gateway=conf.gateway, crgwid=req.crgwid or None)
        return JoinResult(
            ssrc=member.ssrc,
            pushurl=self._url(self.config.push_base, member.token),
            pullurl=self._url(self.config.play_base, member.token),
            pullaudiourl=self._url(self.config.play_base, member.mix_token),
            audioip=mas.audio_ip if mas else address.host,
            audiortpport=mas.audio_port if mas else 0,
            videoip=mas.video_ip if mas else address.host,
            videortpport=mas.video_port if mas else 0,
        ).as_result()

    def _member(self, req: Request) -> tuple[Conference, Member]:
        """The conference and the requesting member; 113/114 otherwise."""
        conf = self.rooms.get(req.conf_id)
        if conf is None:
            raise UnknownConference(f"conference {req.conf_id} has no mini-program")
        member = conf.members.get(req.uuid)
        if member is None:
            raise NotJoined(f"{req.uuid} is not in conference {req.conf_id}")
        return conf, member

    def _target(self, conf: Conference, video: VideoRef) -> Member:
        target = conf.member_by_ssrc(video.antissrc)
        if target is None:
            raise UnknownMember(f"no member with ssrc {video.antissrc} in {conf.conf_id}")
        return target

    def _stop(
        self, conf: Conference, api: GatewayApi, call: str, uuid: str,
        stop: Callable[..., None],
    ) -> bool:
        """A best-effort stop; a failure is logged as a possibly orphaned leg."""
        try:
            with self._reporting(conf):
                stop(uuid=uuid, conf_id=conf.conf_id)
        except CallrouteError as exc:
            event(logger, "orphan_leg", logging.ERROR, confId=conf.conf_id, uuid=uuid,
                  call=call, gateway=conf.gateway, error=str(exc), code=exc.code.value)
            return False
        return True

    def _undo(self, conf: Conference, cause: CallrouteError) -> None:
        """Save a rollback; a store gone meanwhile leaves the request's state behind (logged)."""
        try:
            self.rooms.save(conf)
        except StoreUnavailable as exc:
            event(logger, "state_not_rolled_back", logging.ERROR, confId=conf.conf_id,
                  error=str(exc), cause=str(cause))

    def _request_video(self, req: Request, video: VideoRef) -> str:
        """``wxreqvideo`` / ``wxreqavsync``: the URL the watcher plays."""
        conf, watcher = self._member(req)
        target = self._target(conf, video)
        _, api = self._gateway(conf)
        running = conf.pushes.get(target.uuid)
        was_watching = running is not None and watcher.uuid in running.watchers
        synced = conf.avsync.get(watcher.uuid)
        push, created = self.rooms.watch(conf, watcher.uuid, target.uuid)
        avsync = req.method is Method.REQ_AVSYNC
        if avsync:
            conf.avsync[watcher.uuid] = target.uuid
        self.rooms.save(conf)
        started, ports = False, (0, 0)
        try:
            with self._reporting(conf):
                if created:
                    ports = self.start_push(api, conf, push, watcher.uuid)
                    started = True
                if avsync:
                    api.av_sync(uuid=watcher.uuid, conf_id=conf.conf_id, sync_uuid=target.uuid)
        except CallrouteError as exc:
            if not was_watching:
                self.rooms.unwatch(conf, watcher.uuid, target.uuid)
            if avsync:
                del conf.avsync[watcher.uuid]
                if synced is not None:
                    conf.avsync[watcher.uuid] = synced
            self._undo(conf, exc)
            if started or (created and isinstance(exc, GatewayUnavailable)):
                self._stop(conf, api, "StopPush", target.uuid, api.stop_push)
            raise
        event(logger, "watching", confId=conf.conf_id, uuid=watcher.uuid, member=target.uuid,
              avsync=avsync, started=created, ports=list(ports))
        return self._url(self.config.play_base, push.token)

    def _cancel(self, req: Request, video: VideoRef) -> None:
        """Gateway first, state after: a failed cancel leaves the watch as it was (less an
        AvSync the gateway did clear)."""
        conf, watcher = self._member(req)
        target = self._target(conf, video)
        _, api = self._gateway(conf)
        push = self.rooms.watched(conf, watcher.uuid, target.uuid)
        last = push.watchers == {watcher.uuid}
        try:
            with self._reporting(conf):
                if conf.avsync.get(watcher.uuid) == target.uuid:
                    api.av_sync(uuid=watcher.uuid, conf_id=conf.conf_id, sync_uuid="")
                    del conf.avsync[watcher.uuid]
                if last:
                    api.stop_push(uuid=target.uuid, conf_id=conf.conf_id)
            self.rooms.unwatch(conf, watcher.uuid, target.uuid)
        finally:
            self.rooms.save(conf)
        event(logger, "unwatched", confId=conf.conf_id, uuid=watcher.uuid, member=target.uuid,
              stopped=last)

    def _quit(self, req: Request) -> None:
        conf, member = self._member(req)
        _, api = self._gateway(conf)
        gone = self.rooms.leave(conf, member.uuid)
        self.rooms.save(conf)
        for watcher in gone.avsync_cleared:
            try:
                with self._reporting(conf):
                    api.av_sync(uuid=watcher, conf_id=conf.conf_id, sync_uuid="")
            except CallrouteError as exc:
                event(logger, "avsync_not_cleared", logging.WARNING, confId=conf.conf_id,
                      uuid=watcher, member=member.uuid, error=str(exc))
        for push in [p for p in (gone.own_push, *gone.unwatched) if p is not None]:
            self._stop(conf, api, "StopPush", push.uuid, api.stop_push)
        self._stop(conf, api, "StopPull", member.uuid, api.stop_pull)
        event(logger, "left", confId=conf.conf_id, uuid=member.uuid,
              stopped_pushes=len(gone.unwatched) + (gone.own_push is not None))
