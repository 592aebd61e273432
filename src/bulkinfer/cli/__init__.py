"""The ``bulkinfer`` command line: the sync edge around the async engine."""
