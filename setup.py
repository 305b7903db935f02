"""lrm: large recommendation models (HSTU, SASRec) in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name="lrm",
    version="0.1.0",
    description="Training and scaling generative recommenders (HSTU) in JAX/Flax",
    python_requires=">=3.11",
    packages=find_packages(include=["lrm*", "data_pipeline*", "launch*", "configs*", "bench*", "scaling_studies*"]),
    install_requires=[
        "jax>=0.10,<0.12",
        "flax>=0.12,<0.14",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        "grain>=0.2.12",
        "tensorstore>=0.1.70",
        "ml-collections>=1.0",
        "absl-py>=2.1",
        "numpy>=1.26",
        "tensorboardX>=2.6",
        "flatbuffers>=24",  # jax.export serialisation of serving artifacts
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-timeout>=2.3", "pytest-xdist>=3.5", "matplotlib>=3.7"],  # report tests draw figures
        "scaling": ["matplotlib>=3.7"],  # python -m scaling_studies.report (figures)
        "gpu": ["jax[cuda12]>=0.10,<0.12"],
        "tpu": ["jax[tpu]>=0.10,<0.12"],
    },
    entry_points={
        "console_scripts": [
            "lrm-train=launch.train:main",
            "lrm-preprocess=data_pipeline.preprocess:main",
            "lrm-sweep=scaling_studies.launch_sweep:main",
            "lrm-export=launch.export:main",
            "lrm-evaluate=launch.evaluate:main",
        ],
    },
)
