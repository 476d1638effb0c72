"""Guest sessions: the Guest API that operations call, and its libguestfs (appliance) backend."""
