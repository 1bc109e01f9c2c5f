"""The appliance as an OS service that outlives any console: the platform-neutral core (``core.py``: run until
asked to stop, drain, log to a rotating file in the home), and the commands that install it as a systemd unit or a
Windows service (the OS parts live in ``engine/platform/systemd.py`` and ``engine/platform/windows_service.py``)."""
