"""The ``crucible`` command line. Subcommands are registrations of kind ``command``."""
