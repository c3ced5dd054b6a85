"""The image lane: image tasks batched across tasks, loaded safely, embedded, then stored and reported.

It shares the other lanes' store, report and failure steps (:class:`~engine.stages.Steps`); only loading and
embedding differ from the text lane. Images are loaded (read, downloaded,
decoded; see :mod:`tasks.images`) in threads before the model is asked for, so
a refused or broken image fails its own task with a precise message even when
the image model cannot load, and never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from core.errors import ModelLoadError, PermanentError
from engine.batcher import Batcher
from engine.stages import LaneBase
from engine.work import Outcome, WorkItem
from tasks.images import ImageLimits, LoadedImage, load_image
from tasks.inputs import Prepared

if TYPE_CHECKING:
    from engine.stages import Steps

log_main = logging.getLogger("worker.main")
log_proc = logging.getLogger("worker.task_processor")


class ImageLane(LaneBase):
    """The image lane (:class:`~engine.stages.Lane`): image tasks batched across tasks, one batch at a time."""

    name = "image"

    def __init__(self, steps: Steps) -> None:
        super().__init__(steps, Batcher())
        self.limits = ImageLimits.from_settings(self.settings)
        self._stage: asyncio.Future[None] | None = None

    # -- the lane interface ----------------------------------------------------------------
    def start(self) -> None:
        if self._stage is None or self._stage.done():
            self._stage = asyncio.ensure_future(self._loop())

    async def run(self) -> None:
        """Start the lane and wait for it; cancel to close."""
        self.start()
        assert self._stage is not None
        try:
            await self._stage
        finally:
            await self.close()

    def drain(self, seconds: float) -> None:
        """Stop taking batches: the batch being processed finishes, the queued tasks stay unacknowledged."""
        self._accepting = False
        waiting = self.waiting.clear()
        if waiting:
            log_main.info("Draining: %d queued image tasks left unacknowledged for another worker", len(waiting))
        self._left(len(waiting))

    async def close(self) -> None:
        stage, self._stage = self._stage, None
        if stage is not None:
            stage.cancel()
            await asyncio.gather(stage, return_exceptions=True)

    async def _loop(self) -> None:
        wait = self.settings.batch_wait_ms / 1000
        while self._accepting:
            batch = await self.waiting.next_batch(self.settings.images_batch_size, wait)
            if not self._accepting:  # draining: these stay unacknowledged and go to another worker
                self._left(len(batch))
                break
            self._active += len(batch)
            try:
                await self.process(batch)
            except Exception as exc:  # noqa: BLE001 - a bug must not leave tickets hanging
                log_proc.exception(
                    "Unexpected error in a batch of %d image tasks; failing the unfinished ones", len(batch)
                )
                await self.steps.fail(batch, exc)
            finally:
                self._left(len(batch), active=True)

    async def process(self, batch: list[WorkItem]) -> None:
        """Load, embed, store and report one batch of image tasks; never raises except on cancellation."""
        live = await self.steps.expire(batch)
        if not live:
            return
        await self.steps.begin(live)
        outcomes = [
            Outcome(item=item, texts=[], model=item.task.model_name or self.settings.default_image_model)
            for item in live
        ]
        loaded = await asyncio.gather(
            *(load_image(out.item.task.data, self.limits, task_id=out.item.task.task_id) for out in outcomes),
            return_exceptions=True,
        )
        for out, result in zip(outcomes, loaded, strict=True):
            if isinstance(result, asyncio.CancelledError):
                raise result
            if isinstance(result, BaseException):
                out.error = result
                if not isinstance(result, PermanentError):
                    log_proc.error("Loading the image of task %s failed: %r", out.item.task.task_id, result)
            else:
                out.prepared = Prepared(image=result)
        try:
            await self._embed([out for out in outcomes if out.error is None])
        finally:
            for out in outcomes:  # the pixels are not needed once embedded
                if out.prepared is not None and out.prepared.image is not None:
                    out.prepared.image.release()
        await self.steps.finish(outcomes)

    async def _embed(self, outcomes: list[Outcome]) -> None:
        groups: dict[tuple[str, bool | None], list[Outcome]] = defaultdict(list)
        for out in outcomes:
            groups[(out.model, out.item.task.normalize)].append(out)
        for (model, normalize), members in groups.items():
            error = await self._embed_group(model, normalize, members)
            if error is not None and len(members) > 1 and not isinstance(error, ModelLoadError):
                # one image the model cannot take must not fail its batch mates: retry one by one
                for out in members:
                    if out.error is not None:  # (not those the embedding cache had)
                        await self._embed_group(model, normalize, [out])

    async def _embed_group(self, model: str, normalize: bool | None, members: list[Outcome]) -> BaseException | None:
        members, keys = await self._from_cache(model, normalize, members)
        if not members:
            return None
        images = [_pixels(out) for out in members]
        t0 = time.monotonic()
        try:
            vectors, info = await self.steps.manager.embed_images(
                model, images, batch_size=self.settings.images_batch_size, normalize=normalize
            )
        except Exception as exc:  # noqa: BLE001 - a model failure fails these tasks, never the worker
            if not isinstance(exc, PermanentError):
                log_proc.exception("Embedding %d images with %s failed", len(images), model)
            for out in members:
                out.error = exc
            return exc
        elapsed = (time.monotonic() - t0) * 1000
        self.steps.metrics.batch_size.observe(len(images))
        self.steps.metrics.inference_seconds.labels(model).observe(elapsed / 1000)
        for index, out in enumerate(members):
            out.vectors, out.info, out.embed_ms, out.error = vectors[index : index + 1], info, elapsed, None
        if keys is not None and self.steps.cache is not None and len(vectors) == len(keys):
            self.steps.cache.store(keys, vectors)
        return None

    async def _from_cache(
        self, model: str, normalize: bool | None, members: list[Outcome]
    ) -> tuple[list[Outcome], list[str | None] | None]:
        """Give the members the embedding cache has their vectors; returns the others and their cache keys.

        An image's key covers its decoded RGB pixels as the model gets them (hashed on a thread). Without
        the cache, or when the model cannot tell its identity or load (the model call then says why), every
        member goes to the model.
        """
        cache = self.steps.cache
        if cache is None:
            return members, None
        try:
            identity, info = await self.steps.manager.identify(model)
        except Exception:  # noqa: BLE001 - the model call that follows reports a model that cannot load
            return members, None
        if identity is None:
            return members, None
        images = [_pixels(out) for out in members]
        keys: list[str | None] = await asyncio.to_thread(
            lambda: [cache.key(identity, normalize, b"image", _pixel_bytes(image)) for image in images]
        )
        found = await cache.lookup(keys, info.dim)
        missing: list[Outcome] = []
        missing_keys: list[str | None] = []
        for out, key, vector in zip(members, keys, found, strict=True):
            if vector is None:
                missing.append(out)
                missing_keys.append(key)
            else:
                out.vectors, out.info, out.embed_ms, out.error = vector.reshape(1, -1).copy(), info, 0.0, None
        cache.count(misses=len(missing))
        return missing, missing_keys


def _pixel_bytes(image: Any) -> bytes:
    """What the model is given of an image: its mode, size and pixels."""
    return f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode() + image.tobytes()


def _pixels(out: Outcome) -> Any:
    image: LoadedImage | None = out.prepared.image if out.prepared is not None else None
    assert image is not None and image.image is not None, "an image outcome without pixels"
    return image.image
