"""TEST-ONLY stand-in for the `transformer_engine` package; NOT TransformerEngine (see ../README.md).

Lets `import megatron.bridge` succeed on a CPU machine without TransformerEngine. Installed on ``sys.path`` only by
``tests/bridge/cpu_bridge.install()`` after megatron-core ran its own TE probes. ``__version__`` is ``"0.0.0"`` so that
megatron-core's ``is_te_min_version(...)``, if called at run time, answers False (no TE feature is available).
"""

__version__ = "0.0.0"
IS_TEST_ONLY_STAND_IN = True
