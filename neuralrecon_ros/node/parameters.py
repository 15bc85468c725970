"""The product's single parameter set: every component config, flattened under public names.

The same names serve the ROS node (declared with descriptors), ``config/neuralrecon.yaml``
(``neuralrecon_node: ros__parameters: ...``) and the CLI (``--config FILE -p name:=value``).
"""

from __future__ import annotations

import array
import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..core.config import ParameterError, ParamSpec, coerce_value, config_fields, default_of, param, spec_of
from ..core.keyframes import KeyframeConfig
from ..core.mapping.config import DepthFusionConfig, MapConfig, MeshingConfig
from ..core.mapping.memory import MemoryBoundsConfig
from ..core.mapping.mesh_chunks import MeshChunkConfig
from ..core.mapping.products import ProductsConfig
from ..core.network.config import NeuralReconConfig
from ..core.reconstructor import ReconstructionConfig

NODE_NAME = "neuralrecon_node"


@dataclass
class InputConfig:
    image_topic: str = param("/camera/color/image_raw", "sensor_msgs/Image colour stream (rgb8, bgr8, ...).")
    camera_info_topic: str = param("/camera/color/camera_info", "sensor_msgs/CameraInfo of the colour stream.")
    depth_topic: str = param(
        "/camera/aligned_depth_to_color/image_raw",
        "Depth image registered to the colour image (32FC1 metres or 16UC1 millimetres); used in depth mode.",
    )
    global_frame: str = param("odom", "Fixed frame the map is built in; camera poses are looked up in it.")
    pose_source: str = param(
        "tf", "Where camera poses come from: 'tf' (global_frame <- image frame) or 'odometry' "
        "(odometry_topic + static camera extrinsic from TF).", choices=("tf", "odometry"),
    )
    odometry_topic: str = param("/odom", "nav_msgs/Odometry topic used when pose_source is 'odometry'.")
    max_wait_for_pose_s: float = param(
        0.5, "A frame waits at most this long (message time) for its pose before it is dropped.",
        minimum=0.0, maximum=60.0, unit="s",
    )
    maximum_input_queue_length: int = param(
        30, "Frames waiting for their pose beyond this many are dropped (oldest first).", minimum=1, maximum=10000
    )
    approximate_sync_tolerance_s: float = param(
        0.0, "Pair image, camera_info and depth whose stamps differ by at most this (0 = exact stamps).",
        minimum=0.0, maximum=1.0, unit="s",
    )
    input_qos: str = param(
        "RELIABLE", "QoS of the image, camera_info, depth and odometry subscriptions. 'RELIABLE' (reliable, "
        "volatile, keep last 10: the ROS 2 default profile): no image lost in transport, but nothing from a "
        "best-effort publisher (the node then warns, naming the topic). 'SENSOR_DATA' (best effort, depth "
        "5): receives any camera driver, but large images are lost unless the middleware's receive buffers "
        "are raised (docs/ros.md, QoS); losses count as lost_in_transport. 'SYSTEM_DEFAULT': the "
        "middleware's defaults (Fast DDS: reliable, keep last 1, so images queue nowhere).",
        choices=("RELIABLE", "SENSOR_DATA", "SYSTEM_DEFAULT"),
    )
    image_transport: str = param(
        "raw", "'raw': sensor_msgs/Image on image_topic; 'compressed': sensor_msgs/CompressedImage "
        "(jpeg/png) on image_topic + '/compressed', as image_transport names it.",
        choices=("raw", "compressed"),
    )


@dataclass
class NodeConfig:
    """How the node runs: output rates, services' files, backlog and time-jump policies."""

    mesh_publish_rate_hz: float = param(
        1.0, "Rate of the chunked mesh (~/mesh_markers, visualization_msgs/MarkerArray): only the chunks "
        "that changed since the last message; 0 disables it.", minimum=0.0, maximum=100.0, unit="Hz")
    full_mesh_publish_rate_hz: float = param(
        0.2, "Rate of the whole mesh as one TRIANGLE_LIST Marker (~/mesh, latched); 0 disables it. Large "
        "maps make big messages: keep it low and use ~/mesh_markers for live display.",
        minimum=0.0, maximum=100.0, unit="Hz")
    fragment_volume_publish_rate_hz: float = param(
        1.0, "Rate of the debug Marker ~/fragment_volume (the box the fragment being built covers); "
        "0 disables it.", minimum=0.0, maximum=100.0, unit="Hz")
    tsdf_layer_publish_rate_hz: float = param(
        0.0, "Rate of ~/tsdf_layer (neuralrecon_ros_interfaces/TsdfLayer): the TSDF map's blocks changed or "
        "removed since the last message, for an exact replica of the map on another machine (every block "
        "at the first message, after a reset or map load, and on ~/resend_tsdf_layer); 0 disables it.",
        minimum=0.0, maximum=100.0, unit="Hz")
    diagnostics_rate_hz: float = param(
        1.0, "Rate of diagnostic_msgs/DiagnosticArray on /diagnostics (rates, drops, latencies, map "
        "size); 0 disables it.", minimum=0.0, maximum=100.0, unit="Hz")
    output_directory: str = param(
        "", "Relative paths given to the save_ply / save_map / load_map services resolve against this "
        "directory ('' = the node's working directory); a leading ~ is expanded.")
    on_time_jump: str = param(
        "keep_map", "When the node's clock jumps back (ROS time, /clock under use_sim_time; a replay: the "
        "bag's receive clock), as a looping bag or a restarted simulator makes it: TF history, waiting "
        "frames and the fragment under construction are always dropped, and the jump is counted and "
        "logged. 'keep_map' keeps the map; 'clear_map' also clears it (destructive: everything mapped so "
        "far is lost). Old message stamps while the clock moves on are never a jump: such messages are "
        "dropped as stale.", choices=("keep_map", "clear_map"))
    backlog_policy: str = param(
        "drop_oldest_keyframe", "When more than maximum_backlog_length posed frames wait for the "
        "reconstruction worker: 'drop_oldest_keyframe' drops the oldest waiting frame (the fragment under "
        "construction goes on with newer ones); 'skip_fragment' drops every waiting frame and the "
        "fragment under construction, so the next fragment starts afresh. Never a half-built fragment.",
        choices=("drop_oldest_keyframe", "skip_fragment"))
    maximum_backlog_length: int = param(
        30, "Posed frames that may wait for the reconstruction worker (e.g. while the network runs a "
        "fragment) before backlog_policy applies.", minimum=1, maximum=10000)


#: every component config that contributes public parameters, in the order the YAML lists them
PARAMETER_GROUPS: tuple[type, ...] = (
    InputConfig,
    ReconstructionConfig,
    KeyframeConfig,
    MapConfig,
    DepthFusionConfig,
    MeshingConfig,
    MeshChunkConfig,
    MemoryBoundsConfig,
    NeuralReconConfig,
    ProductsConfig,
    NodeConfig,
)


#: groups whose parameters may change while the node runs (the logic reads them live or hands them on,
#: see NodeLogic.update_parameters); with RUNTIME_EXTRAS, every other parameter is read at start-up only
RUNTIME_GROUPS: tuple[type, ...] = (NodeConfig, ProductsConfig, DepthFusionConfig)
RUNTIME_EXTRAS = frozenset({"keyframe_min_translation_m", "keyframe_min_rotation_deg", "max_wait_for_pose_s",
                            "maximum_input_queue_length", "approximate_sync_tolerance_s"})
#: the one list of parameters that may change while the node runs (ROS descriptors' read_only, the
#: parameter file's "(read at start-up only)", NodeLogic.update_parameters all follow it)
RUNTIME_PARAMETERS = frozenset({f.name for group in RUNTIME_GROUPS for f in config_fields(group)} | RUNTIME_EXTRAS)

#: bounds of a ROS integer parameter (int64) for a one-sided range
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class ParameterInfo:
    name: str
    default: Any
    spec: ParamSpec
    group: type

    @property
    def read_only(self) -> bool:
        """Read at start-up only (see :data:`RUNTIME_PARAMETERS`)."""
        return self.name not in RUNTIME_PARAMETERS


@dataclass(frozen=True)
class DescriptorFields:
    """The values of an ``rcl_interfaces/ParameterDescriptor`` for one public parameter."""

    description: str
    read_only: bool
    additional_constraints: str
    floating_point_range: tuple[float, float] | None  # (from_value, to_value), step 0
    integer_range: tuple[int, int] | None
    dynamic_typing: bool  # a double that also takes an integer (`ros2 param set ... rate 3`); checked here


def descriptor_fields(info: ParameterInfo) -> DescriptorFields:
    """Descriptor of a registry parameter: description (+ unit), range of a number, choices, read-only."""
    spec = info.spec
    is_float = isinstance(info.default, float)
    is_int = isinstance(info.default, int) and not isinstance(info.default, bool)
    has_range = spec.minimum is not None or spec.maximum is not None
    float_range = int_range = None
    if has_range and is_float:
        float_range = (-math.inf if spec.minimum is None else float(spec.minimum),
                       math.inf if spec.maximum is None else float(spec.maximum))
    elif has_range and is_int:
        int_range = (INT64_MIN if spec.minimum is None else math.ceil(spec.minimum),
                     INT64_MAX if spec.maximum is None else math.floor(spec.maximum))
    return DescriptorFields(
        description=spec.description + (f" Unit: {spec.unit}." if spec.unit else ""),
        read_only=info.read_only,
        additional_constraints=spec.describe_range(),
        floating_point_range=float_range,
        integer_range=int_range,
        dynamic_typing=is_float,
    )


def plain_value(value: Any) -> Any:
    """A ROS parameter value as the registry expects it (array parameters come back as array.array)."""
    if isinstance(value, (array.array, tuple)):
        return list(value)
    return value


def parameter_infos() -> dict[str, ParameterInfo]:
    """All public parameters by name, checking that no two components claim the same name."""
    infos: dict[str, ParameterInfo] = {}
    for group in PARAMETER_GROUPS:
        for f in config_fields(group):
            if f.name in infos:
                owner = infos[f.name].group.__name__
                raise RuntimeError(f"parameter {f.name!r} is declared by both {owner} and {group.__name__}")
            infos[f.name] = ParameterInfo(f.name, default_of(f), spec_of(f), group)
    return infos


class NodeParameters:
    """Validated values of every public parameter; attribute access by name (``params.voxel_size``)."""

    def __init__(self, values: dict[str, Any] | None = None) -> None:
        infos = parameter_infos()
        self._values = {name: info.default for name, info in infos.items()}
        self.update(values or {})

    def update(self, values: dict[str, Any]) -> None:
        """Set several parameters at once; nothing changes if any name or value is rejected."""
        infos = parameter_infos()
        checked = {}
        for name, value in values.items():
            if name not in infos:
                raise ParameterError(_unknown_message(name, infos))
            info = infos[name]
            checked[name] = coerce_value(name, value, info.default, info.spec)
        self._values.update(checked)

    def __getattr__(self, name: str) -> Any:
        values = self.__dict__.get("_values")
        if values is None or name not in values:
            raise AttributeError(name)
        return values[name]

    def group(self, config_type: type) -> Any:
        """The component config dataclass filled with the current values."""
        names = [f.name for f in dataclasses.fields(config_type) if f.name in self._values]
        return config_type(**{name: self._values[name] for name in names})

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)


def _unknown_message(name: str, infos: dict[str, ParameterInfo]) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(infos), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return f"unknown parameter '{name}'{hint} (see config/neuralrecon.yaml for the full list)"
