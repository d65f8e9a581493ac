"""The chaos suite (issue 11): faults injected by hand into real processes, each test with the
figure it must hold. `make chaos` runs it; the ordinary test run includes it too."""
