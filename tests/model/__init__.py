"""The delivery model of tests/test_model.py: backends, the state machine and its checks."""
