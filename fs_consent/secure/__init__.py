"""Keys, personal-field protection, the spool of plaintext, the vault of sealed recordings and
the file helpers (0600 files, fsync of directories). Imports ``core`` only."""
