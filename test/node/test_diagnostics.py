"""The diagnostics reporter: statuses, levels, rates and GPU memory (stand-ins, no CUDA needed)."""

from __future__ import annotations

import types

import torch
from rosbags.typesys import Stores, get_typestore

from neuralrecon_ros.core.timing import StageTimer
from neuralrecon_ros.io import messages as m
from neuralrecon_ros.node.diagnostics import (
    DiagnosticsReporter,
    NodeSample,
    PipelineStats,
    diagnostic_values,
    gather_pipeline_stats,
)

TYPES = m.rosbags_types(get_typestore(Stores.ROS2_HUMBLE))


def sample(now: float, images: int, frames: int, dropped: dict[str, int] | None = None,
           **stats) -> NodeSample:
    return NodeSample(
        now=now, received={"image": images, "tf": 2 * images}, frames_processed=frames, queue_length=1,
        backlog_length=0,
        dropped={"tf_missing": 0, "backlog_full": 0, "pipeline_error": 0, **(dropped or {})},
        time_jumps=0, fragments_skipped=0, published={"mesh": 1}, publish_errors=0,
        pipeline=PipelineStats(**{"counts": {"keyframes": frames // 3, "fragments": frames // 9}, **stats}),
        image_topic="/cam",
    )


def test_rates_levels_and_values():
    reporter = DiagnosticsReporter("nr")
    first = reporter.message(TYPES, sample(10.0, 0, 0))
    assert [s.name for s in first.status] == ["nr: inputs", "nr: reconstruction", "nr: map"]
    assert first.status[0].level == 1
    assert first.status[0].message == "no image received on /cam since the last report"
    second = reporter.message(TYPES, sample(12.0, 60, 54, stage_ms={"integrate": (5.0, 4.0)}))
    inputs, reconstruction, world = (diagnostic_values(s) for s in second.status)
    assert [s.level for s in second.status] == [0, 0, 0]
    assert (inputs["image_rate_hz"], reconstruction["frame_rate_hz"]) == ("30.000", "27.000")
    assert (reconstruction["keyframe_rate_hz"], reconstruction["fragment_rate_hz"]) == ("9.000", "3.000")
    assert reconstruction["latency_integrate_last_ms"] == "5.000"
    assert reconstruction["latency_integrate_median_ms"] == "4.000"
    assert inputs["tf_received"] == "120" and world["published_mesh"] == "1"
    assert "dropped_backlog_full" in reconstruction and "dropped_backlog_full" not in inputs
    third = reporter.message(TYPES, sample(13.0, 90, 80, {"tf_missing": 2, "pipeline_error": 1}))
    assert [s.level for s in third.status] == [1, 2, 0]
    assert third.status[0].message == "dropped since the last report: tf_missing=2"
    assert diagnostic_values(third.status[0])["tf_drops"] == "2"
    assert m.header_stamp(third) == 13.0


def test_gather_reports_timers_map_and_gpu_memory(monkeypatch):
    timer, network = StageTimer(), StageTimer()
    timer.add("integrate", 2.0)
    timer.add("integrate", 6.0)
    network.add("backbone2d", 30.0)
    cuda_map = types.SimpleNamespace(num_blocks=7, memory_bytes=lambda: 3 * 2**20,
                                     device=torch.device("cuda", 0))
    pipeline = types.SimpleNamespace(timer=timer, reconstructor=types.SimpleNamespace(timer=network),
                                     counts={"frames": 2}, tsdf_map=cuda_map,
                                     mesher=types.SimpleNamespace(num_faces=11))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 2**30)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 2 * 2**30)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: 3 * 2**30)
    stats = gather_pipeline_stats(pipeline)
    assert stats.stage_ms == {"integrate": (6.0, 4.0), "network_backbone2d": (30.0, 30.0)}
    assert (stats.map_blocks, stats.map_memory_bytes, stats.mesh_faces) == (7, 3 * 2**20, 11)
    assert stats.gpu_memory_bytes == {"allocated": 2**30, "reserved": 2 * 2**30, "peak_allocated": 3 * 2**30}
    report = DiagnosticsReporter("nr").message(TYPES, sample(1.0, 0, 0, **vars(stats)))
    world = diagnostic_values(report.status[2])
    assert world["gpu_memory_allocated_mib"] == "1024.000"
    assert world["gpu_memory_peak_allocated_mib"] == "3072.000"
    assert world["map_memory_mib"] == "3.000"

