"""The running server: FreeSWITCH's connections (``server``), one call each (``driver``), the
local control socket, sd_notify. The only layer with sockets to FreeSWITCH. Imports everything
below it, never ``cli``."""
