"""The request stage: one encoded item -> one result row, with retries and the breaker.

Retryable failures are retried with backoff up to the policy's attempts. Failures that look
like a server outage open the shared circuit breaker; while it is open the item waits and the
failed attempt is not counted. A 429 (a rate limit, usually a gateway in front of the model)
is not counted either: the item waits out ``Retry-After`` (else a backoff) in its slot,
``auto`` sizes the pool to what gets through, and only a server that has answered nothing but
429 for ``max_outage`` seconds stops the run. Each attempt holds a slot of the pool (the
concurrency limiter); other waits between attempts leave it to other items. A finished row
is handed on even if the run is being stopped (the send is shielded), so an answer that
arrived is never thrown away.

With several endpoints, the prompts of one image go to the endpoint its first prompt went to
(that server's prefix and image caches hold it) unless it is busier than the least-loaded one
by more than the number of prompts.

A prompt with a JSON Schema has each answer parsed and validated (``AnswerCheck``): an answer
that is not JSON, was cut off or breaks the schema is tried again at once (it counts in
``attempts``); after the last attempt the row is ``failed`` with ``schema: <why>`` and the raw
answer in ``caption``. A valid answer's properties fill their typed columns.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

import anyio
from anyio.abc import ObjectReceiveStream
from anyio.streams.memory import MemoryObjectSendStream

from .breaker import Breaker, wait_any
from .client import ChatClient, Completion
from .errors import PermanentError, RetryableError
from .items import RequestItem, Row, RowMaker
from .payload import build_body, encode_body
from .progress import plural
from .retry import RetryPolicy, compute_backoff
from .schema import STATUS_FAILED, STATUS_OK, utc_now
from .steer import Steering
from .structured import AnswerCheck, SchemaViolation

log = logging.getLogger(__name__)

SHARED_ANSWERS = 10_000  # ok answers kept for identical images met later in the run
AFFINITY_IMAGES = 4_096  # images whose endpoint is remembered (their prompts come together)


@dataclass(slots=True)
class Route:
    """One server: its client (which counts its requests in flight) and its breaker."""

    url: str
    client: ChatClient
    breaker: Breaker
    throttled_since: float | None = None  # first 429 since its last answer


class Requester:
    def __init__(
        self,
        routes: list[Route],
        policy: RetryPolicy,
        make_row: RowMaker,
        model: str,
        limiter: anyio.CapacityLimiter,
        steering: Steering | None = None,
        on_throttled: Callable[[float], None] = lambda _s: None,
        max_throttled_s: float = math.inf,
        checks: Mapping[str, AnswerCheck] | None = None,
        prompts: int = 1,
    ) -> None:
        self.checks = checks or {}  # prompt name -> its schema's check
        self.prompts = prompts  # per image: how much busier its endpoint may be than the least
        # image sha256 -> the endpoint its last prompt went to (several endpoints only)
        self._affinity: OrderedDict[str, Route] = OrderedDict()
        self.routes = routes
        self.limiter = limiter  # requests in flight; its size is the current concurrency
        self.steering = steering
        self.policy = policy
        self.make_row = make_row
        self.model = model
        self.on_throttled = on_throttled  # every answer has been 429 for that many seconds
        self.max_throttled_s = max_throttled_s
        self.stopping = False
        self.other_models: set[str] = set()
        # Identical requests in this run: the first is sent, the others wait for its answer.
        self._pending: dict[str, anyio.Event] = {}
        # recent ok answers, with the endpoint that gave them and their structured values
        self._answers: OrderedDict[str, tuple[Completion, str, Row]] = OrderedDict()

    async def worker(
        self, rx: ObjectReceiveStream[RequestItem], rows: MemoryObjectSendStream[Row]
    ) -> None:
        async with rx, rows:
            async for item in rx:
                if self.stopping:
                    break
                row = await self.caption(item)
                try:
                    rows.send_nowait(row)  # the usual case: room in the buffer
                except anyio.WouldBlock:
                    with anyio.CancelScope(shield=True):
                        await rows.send(row)

    async def route(self, image: str | None = None) -> Route:
        """The endpoint for a request about ``image`` (its sha256): the one its other prompts
        went to while it is healthy and not more than a few requests busier than the least
        loaded (that server's prefix and image caches hold it), else the least-loaded endpoint
        whose breaker is closed. Waits while all are down."""
        while True:
            healthy = [r for r in self.routes if not r.breaker.is_open]
            if healthy:
                least = min(healthy, key=lambda r: r.client.in_flight)
                if image is None or len(self.routes) == 1:
                    return least
                last = self._affinity.get(image)
                busier = 0 if last is None else last.client.in_flight - least.client.in_flight
                if last in healthy and busier <= self.prompts:
                    return last
                self._affinity[image] = least
                if len(self._affinity) > AFFINITY_IMAGES:
                    self._affinity.popitem(last=False)
                return least
            await wait_any([r.breaker for r in self.routes])

    async def caption(self, item: RequestItem) -> Row:
        """The row for ``item``; an identical request already sent or in flight is reused."""
        rk = item.request_key
        while rk in self._pending:
            await self._pending[rk].wait()
        if rk in self._answers:
            return self._shared_row(item, *self._answers[rk])
        done = self._pending[rk] = anyio.Event()
        try:
            row = await self._caption(item)
        finally:
            del self._pending[rk]
            done.set()
        return row

    def _remember(self, item: RequestItem, c: Completion, endpoint: str, values: Row) -> None:
        self._answers[item.request_key] = (c, endpoint, values)
        if len(self._answers) > SHARED_ANSWERS:
            self._answers.popitem(last=False)

    @staticmethod
    def _answer(c: Completion) -> dict[str, object]:
        """The columns an ok row takes from its answer."""
        return {
            "caption": c.caption,
            "finish_reason": c.finish_reason,
            "http_status": 200,  # an answer is only parsed from a 200
            "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.completion_tokens,
            "response_model": c.model,
        }

    def _shared_row(self, item: RequestItem, c: Completion, endpoint: str, values: Row) -> Row:
        now = utc_now()
        return self.make_row(
            item.key, item.relpath, item.sha256, item.prompt, STATUS_OK, now, now, attempts=0,
            width=item.image.width, height=item.image.height, endpoint=endpoint,
            queue_wait_s=time.perf_counter() - item.ready_at, encode_s=item.encode_s,
            **self._answer(c), **values, **(item.keep or {}),
        )  # fmt: skip

    async def _caption(self, item: RequestItem) -> Row:
        """Send ``item`` until it has an answer or has used its attempts. Each attempt holds a
        slot of the pool; waits between attempts do not."""
        body = build_body(self.model, item.prompt, item.text, item.image.data_uri)
        content = encode_body(body, stream=self.routes[0].client.stream)  # once, for every attempt
        common: dict[str, object] = {
            "encode_s": item.encode_s,
            "width": item.image.width,
            "height": item.image.height,
            **(item.keep or {}),
        }
        check = self.checks.get(item.prompt.name)
        started = utc_now()
        attempt = 0  # attempts that count against the retry budget
        sent = 0  # requests actually sent (the ``attempts`` column)
        throttles = 0  # 429 answers: waited out, never counted against the item
        while True:
            async with self.limiter:
                if sent == 0:
                    started = utc_now()
                    common["queue_wait_s"] = time.perf_counter() - item.ready_at
                    common["concurrency"] = int(self.limiter.total_tokens)
                route = await self.route(item.sha256)
                attempt += 1
                sent += 1
                common["endpoint"] = route.url
                sent_at = time.monotonic()
                t0 = time.perf_counter()
                try:
                    c = await route.client.send(content)
                except PermanentError as exc:
                    return self.make_row(
                        item.key, item.relpath, item.sha256, item.prompt, STATUS_FAILED, started,
                        utc_now(), error=str(exc), http_status=exc.status, attempts=sent,
                        latency_s=time.perf_counter() - t0, **common,
                    )  # fmt: skip
                except RetryableError as exc:
                    error, latency = exc, time.perf_counter() - t0
                else:
                    if check is None:
                        return self._ok(item, c, route, started, sent, sent_at, t0, common, {})
                    try:
                        values = check.values(c.caption, c.finish_reason)
                    except SchemaViolation as exc:
                        # The server is fine; the answer is not: try again at once (counted).
                        route.breaker.success()
                        if attempt < self.policy.attempts:
                            log.debug("answer for %s breaks its schema: %s", item.relpath, exc)
                            continue
                        return self.make_row(
                            item.key, item.relpath, item.sha256, item.prompt, STATUS_FAILED,
                            started, utc_now(), error=f"schema: {exc}", attempts=sent,
                            latency_s=time.perf_counter() - t0, **self._answer(c), **common,
                        )  # fmt: skip
                    return self._ok(item, c, route, started, sent, sent_at, t0, common, values)
                if error.status == 429:
                    # A rate limit says "later", not "this item is bad": the attempt is not
                    # counted. The item waits out Retry-After holding its slot, so the pool's
                    # limit bounds what is in flight and what is told to wait together.
                    attempt -= 1
                    throttles += 1
                    self._throttled(route, sent_at)
                    delay = compute_backoff(self.policy, throttles, error.retry_after)
                    log.debug("429 for %s: waiting %.2fs", item.relpath, delay)
                    await anyio.sleep(delay)
                    continue
            # Outside the pool: waiting for the next attempt leaves the slot to other items.
            if error.outage and route.breaker.failure(certain=error.certain):
                attempt -= 1  # the server is away: not this item's fault; go elsewhere/wait
                continue
            elif attempt >= self.policy.attempts:
                return self.make_row(
                    item.key, item.relpath, item.sha256, item.prompt, STATUS_FAILED, started,
                    utc_now(), error=f"{error} (gave up after {plural(attempt, 'attempt')})",
                    http_status=error.status, attempts=sent, latency_s=latency, **common,
                )  # fmt: skip
            else:
                delay = compute_backoff(self.policy, attempt, error.retry_after)
            log.debug("retrying %s in %.2fs after: %s", item.relpath, delay, error)
            await anyio.sleep(delay)

    def _throttled(self, route: Route, sent_at: float) -> None:
        """A 429: tell auto, and stop the run if the server has given nothing else too long."""
        if self.steering is not None:
            self.steering.throttled(sent_at)
        now = time.monotonic()
        if route.throttled_since is None:
            route.throttled_since = now
        elif now - route.throttled_since > self.max_throttled_s:
            self.on_throttled(now - route.throttled_since)

    def _ok(
        self,
        item: RequestItem,
        c: Completion,
        route: Route,
        started: datetime,
        sent: int,
        sent_at: float,
        t0: float,
        common: dict[str, object],
        values: Row,
    ) -> Row:
        latency = time.perf_counter() - t0
        route.breaker.success()
        route.throttled_since = None
        if self.steering is not None:
            self.steering.observe_latency(sent_at, latency)
        self._remember(item, c, route.url, values)
        if c.model and c.model != self.model and c.model not in self.other_models:
            self.other_models.add(c.model)
            log.warning("the server answered as model %r, not %r", c.model, self.model)
        return self.make_row(
            item.key, item.relpath, item.sha256, item.prompt, STATUS_OK, started, utc_now(),
            attempts=sent, latency_s=latency, ttft_s=c.ttft_s, **self._answer(c), **common,
            **values,
        )  # fmt: skip
