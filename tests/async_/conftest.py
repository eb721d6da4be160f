"""The async tests' fixtures live in tests/conftest.py (make_adb, adb, run)."""
