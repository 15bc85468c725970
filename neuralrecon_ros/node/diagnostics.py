"""Node health as ``diagnostic_msgs/DiagnosticArray`` (for ``/diagnostics``, rqt_robot_monitor, Foxglove).

Three statuses, named like diagnostic_updater tasks (``<node>: <task>``):

- ``inputs``: messages received, the image rate, the frame queue, drops by reason (every reason of
  the node logic, zeros included, so the key set is stable), TF drops, time jumps. WARN when something
  was dropped since the last report or no image arrived during it.
- ``reconstruction``: frames / keyframes / fragments (totals and rates), the worker backlog, skipped
  fragments, per-stage latency (last and median, ms) from the pipeline's stage timers. WARN on backlog
  drops or a time jump since the last report, ERROR when a frame failed in the pipeline.
- ``map``: blocks, memory of the map's tensors, mesh faces, outputs published, GPU memory (allocated,
  reserved, peak) when the map lives on CUDA. WARN when publishing an output failed since the last report.

Rates are differences of the cumulative counters between two reports divided by the time between them
(the transport's clock, which the caller passes). Values are strings, as ``diagnostic_msgs/KeyValue``
requires; keys are snake_case with their unit in the name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..io.messages import MessageTypes, make_header

#: drop reasons (keys of NodeLogic.dropped) counted as TF drops
TF_DROP_REASONS = ("tf_missing", "tf_extrapolation")
#: drop reasons that happen in the worker (backlog policy, pipeline failures)
WORKER_DROP_REASONS = ("backlog_full", "backlog_skip", "pipeline_error")
MIB = 1024.0 * 1024.0


@dataclass
class PipelineStats:
    """What the worker reports about the pipeline (gathered on the worker thread)."""

    counts: dict[str, int] = field(default_factory=dict)  # frames, keyframes, fragments
    stage_ms: dict[str, tuple[float, float]] = field(default_factory=dict)  # stage -> (last, median)
    map_blocks: int = 0
    map_memory_bytes: int = 0
    mesh_faces: int = 0
    gpu_memory_bytes: dict[str, int] | None = None  # allocated, reserved, peak_allocated


def gather_pipeline_stats(pipeline: Any) -> PipelineStats:
    """Counters, stage latencies, map size and GPU memory of a ReconstructionPipeline."""
    stage_ms: dict[str, tuple[float, float]] = {}
    timers = [("", pipeline.timer)]
    network_timer = getattr(pipeline.reconstructor, "timer", None)
    if network_timer is not None and network_timer is not pipeline.timer:
        timers.append(("network_", network_timer))
    for prefix, timer in timers:
        for stage, summary in timer.summary().items():
            last = timer.last(stage)
            stage_ms[prefix + stage] = (float(last if last is not None else 0.0), float(summary["median"]))
    tsdf_map = pipeline.tsdf_map
    return PipelineStats(
        counts=dict(pipeline.counts),
        stage_ms=stage_ms,
        map_blocks=int(tsdf_map.num_blocks),
        map_memory_bytes=int(tsdf_map.memory_bytes()),
        mesh_faces=int(getattr(pipeline.mesher, "num_faces", 0)),
        gpu_memory_bytes=_gpu_memory(getattr(tsdf_map, "device", None)),
    )


def _gpu_memory(device: Any) -> dict[str, int] | None:
    if device is None or getattr(device, "type", "cpu") != "cuda":
        return None
    import torch

    return {
        "allocated": int(torch.cuda.memory_allocated(device)),
        "reserved": int(torch.cuda.memory_reserved(device)),
        "peak_allocated": int(torch.cuda.max_memory_allocated(device)),
    }


@dataclass
class NodeSample:
    """Cumulative counters of the node at transport time ``now`` (seconds)."""

    now: float
    received: dict[str, int]  # input messages by kind (image, camera_info, depth, tf, ...)
    frames_processed: int
    queue_length: int
    backlog_length: int
    dropped: dict[str, int]  # every drop reason, zeros included
    time_jumps: int
    fragments_skipped: int
    published: dict[str, int]  # messages per output key
    publish_errors: int
    pipeline: PipelineStats
    image_topic: str = ""

    def counters(self) -> dict[str, float]:
        return {
            "image": self.received.get("image", 0),
            "frame": self.frames_processed,
            "keyframe": self.pipeline.counts.get("keyframes", 0),
            "fragment": self.pipeline.counts.get("fragments", 0),
        }


class DiagnosticsReporter:
    """Turns successive :class:`NodeSample` s into DiagnosticArray messages (rates from differences)."""

    def __init__(self, node_name: str) -> None:
        self.node_name = node_name
        self._previous: NodeSample | None = None

    def status_name(self, task: str) -> str:
        return f"{self.node_name}: {task}"

    def message(self, types: MessageTypes, sample: NodeSample) -> Any:
        previous = self._previous
        self._previous = sample
        rates = self._rates(previous, sample)
        statuses = [
            self._inputs(types, sample, previous, rates),
            self._reconstruction(types, sample, previous, rates),
            self._map(types, sample, previous),
        ]
        return types("diagnostic_msgs/msg/DiagnosticArray")(
            header=make_header(types, sample.now, ""), status=statuses
        )

    @staticmethod
    def _rates(previous: NodeSample | None, sample: NodeSample) -> dict[str, float]:
        if previous is None or sample.now <= previous.now:
            return dict.fromkeys(sample.counters(), 0.0)
        dt = sample.now - previous.now
        before = previous.counters()
        return {key: max(0.0, (value - before[key]) / dt) for key, value in sample.counters().items()}

    def _status(
        self, types: MessageTypes, task: str, level: str, message: str, values: dict[str, Any]
    ) -> Any:
        Status = types("diagnostic_msgs/msg/DiagnosticStatus")
        KeyValue = types("diagnostic_msgs/msg/KeyValue")
        return Status(
            level=getattr(Status, level),  # the class constant: an int (rosbags) or bytes (rclpy)
            name=self.status_name(task),
            message=message,
            hardware_id=self.node_name,
            values=[KeyValue(key=key, value=_text(value)) for key, value in values.items()],
        )

    def _inputs(self, types: MessageTypes, s: NodeSample, previous: NodeSample | None,
                rates: dict[str, float]) -> Any:
        values: dict[str, Any] = {f"{kind}_received": count for kind, count in sorted(s.received.items())}
        values.update(
            image_rate_hz=rates["image"],
            queue_length=s.queue_length,
            tf_drops=sum(s.dropped.get(r, 0) for r in TF_DROP_REASONS),
            dropped_total=sum(n for reason, n in s.dropped.items() if reason not in WORKER_DROP_REASONS),
            time_jumps=s.time_jumps,
        )
        values.update({f"dropped_{reason}": count for reason, count in s.dropped.items()
                       if reason not in WORKER_DROP_REASONS})
        new_drops = _increase(s.dropped, previous.dropped if previous else {}, exclude=WORKER_DROP_REASONS)
        images_now = s.received.get("image", 0)
        images_before = previous.received.get("image", 0) if previous else 0
        if new_drops:
            level = "WARN"
            message = "dropped since the last report: " + ", ".join(f"{k}={v}" for k, v in new_drops.items())
        elif images_now == images_before:
            level = "WARN"
            where = f" on {s.image_topic}" if s.image_topic else ""
            message = f"no image received{where} since the last report"
        else:
            level, message = "OK", f"images at {rates['image']:.1f} Hz"
        return self._status(types, "inputs", level, message, values)

    def _reconstruction(self, types: MessageTypes, s: NodeSample, previous: NodeSample | None,
                        rates: dict[str, float]) -> Any:
        counts = s.pipeline.counts
        values: dict[str, Any] = {
            "frames": s.frames_processed,
            "keyframes": counts.get("keyframes", 0),
            "fragments": counts.get("fragments", 0),
            "frame_rate_hz": rates["frame"],
            "keyframe_rate_hz": rates["keyframe"],
            "fragment_rate_hz": rates["fragment"],
            "backlog_length": s.backlog_length,
            "fragments_skipped": s.fragments_skipped,
        }
        values.update({f"dropped_{reason}": s.dropped.get(reason, 0) for reason in WORKER_DROP_REASONS})
        for stage, (last, median) in sorted(s.pipeline.stage_ms.items()):
            values[f"latency_{stage}_last_ms"] = last
            values[f"latency_{stage}_median_ms"] = median
        before = previous.dropped if previous else {}
        new_drops = _increase({r: s.dropped.get(r, 0) for r in WORKER_DROP_REASONS}, before)
        jumped = s.time_jumps > (previous.time_jumps if previous else 0)
        if new_drops.get("pipeline_error"):
            level = "ERROR"
            message = f"{new_drops['pipeline_error']} frame(s) failed in the pipeline (see the log)"
        elif new_drops or jumped:
            level = "WARN"
            parts = [f"{k}={v}" for k, v in new_drops.items()] + (["time jumped back"] if jumped else [])
            message = "since the last report: " + ", ".join(parts)
        else:
            level = "OK"
            message = (f"{s.frames_processed} frames, {values['keyframes']} keyframes, "
                       f"{values['fragments']} fragments")
        return self._status(types, "reconstruction", level, message, values)

    def _map(self, types: MessageTypes, s: NodeSample, previous: NodeSample | None) -> Any:
        p = s.pipeline
        values: dict[str, Any] = {
            "map_blocks": p.map_blocks,
            "map_memory_mib": p.map_memory_bytes / MIB,
            "mesh_faces": p.mesh_faces,
            "publish_errors": s.publish_errors,
        }
        values.update({f"published_{key}": count for key, count in sorted(s.published.items())})
        if p.gpu_memory_bytes is not None:
            values.update({f"gpu_memory_{k}_mib": v / MIB for k, v in p.gpu_memory_bytes.items()})
        failed = s.publish_errors - (previous.publish_errors if previous else 0)
        if failed > 0:
            level = "WARN"
            message = f"{failed} output(s) failed to publish since the last report (see the log)"
        else:
            level, message = "OK", f"{p.map_blocks} blocks, {p.map_memory_bytes / MIB:.1f} MiB"
        return self._status(types, "map", level, message, values)


def _increase(now: dict[str, int], before: dict[str, int], exclude: tuple[str, ...] = ()) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in sorted(now.items())
            if k not in exclude and v > before.get(k, 0)}


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def diagnostic_values(status: Any) -> dict[str, str]:
    """``{key: value}`` of a ``DiagnosticStatus`` (for tools and tests)."""
    return {str(kv.key): str(kv.value) for kv in status.values}
