"""TensorBoard: event files under `<output>/tensorboard`, read back for the steps they hold; rank 0's sink."""

from __future__ import annotations

import logging
import os
import shutil
import struct
import tempfile
from pathlib import Path

from sftjob_trainer import object_store
from sftjob_trainer.tracking.common import Sink

log = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"


def read_tensorboard_scalars(uri: str) -> dict[str, list[tuple[int, float]]]:
    """The scalars of every TensorBoard event file under `uri` (local or s3://), by tag, in file order.

    A record cut off at the end of a file (a writer killed mid-write) ends that file, as TensorBoard reads it.

    Args:
        uri: A directory of `events.out.tfevents.*` files.

    Returns:
        `{tag: [(step, value), ...]}`.
    """
    from tensorboardX.proto.event_pb2 import Event

    scalars: dict[str, list[tuple[int, float]]] = {}
    names = [name for name in object_store.list_files(uri)
             if name.rsplit("/", 1)[-1].startswith("events.out.tfevents.")]
    for name in sorted(names):
        data = object_store.read_bytes(object_store.join(uri, name))
        pos = 0
        while pos + 12 <= len(data):  # TFRecord: u64 length, u32 crc, payload, u32 crc
            (length,) = struct.unpack_from("<Q", data, pos)
            start, end = pos + 12, pos + 12 + length
            if end + 4 > len(data):
                break
            try:
                event = Event.FromString(data[start:end])
            except Exception:  # a torn record ends the file
                break
            for value in event.summary.value:
                if value.WhichOneof("value") == "simple_value":
                    scalars.setdefault(value.tag, []).append((int(event.step), float(value.simple_value)))
            pos = end + 4
    return scalars


class TensorBoardSink(Sink):
    """Event files of this attempt, written locally (staged and uploaded on sync for an s3:// output)."""

    name = "TensorBoard"

    def __init__(self, output_uri: str, params: dict[str, str], attempt: int | None) -> None:
        super().__init__()
        from tensorboardX import SummaryWriter

        self.target = object_store.join(output_uri, TENSORBOARD_DIR)
        for tag, points in read_tensorboard_scalars(self.target).items():
            self.marks[tag] = max(step for step, _ in points)
        self.staging = Path(tempfile.mkdtemp(prefix="sftjob-tb-")) if object_store.is_s3(self.target) else None
        logdir = self.staging if self.staging is not None else Path(self.target)
        self.writer = SummaryWriter(logdir=str(logdir), filename_suffix=f".a{attempt or 0}.{os.getpid()}",
                                    flush_secs=30)
        if not self.marks:
            table = "\n".join(f"| {key} | {value} |" for key, value in params.items())
            self.writer.add_text("hyperparameters", "| param | value |\n|---|---|\n" + table, 0)
            self.writer.flush()

    def _log(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()  # on a local output the file is durable now; on s3, at the next sync

    def sync(self) -> None:
        """Upload the staged event files (s3:// outputs)."""
        if self.staging is not None and not self.broken:
            try:
                object_store.upload_dir(self.staging, self.target)
            except object_store.StorageError as err:
                log.warning("tracking: TensorBoard event files not uploaded: %s", err)

    def close(self) -> None:
        """Close the writer and upload what is left."""
        self.writer.close()
        self.sync()
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
