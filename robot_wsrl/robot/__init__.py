"""The onboard side: runner, safety envelope, ONNX policy, control server, learner link.

Never imports torch (an import-linter contract checks it).
"""
