"""Phoenix: the Pulumi program entry point (``pulumi up -s <stack>``)."""

from phoenix.program import main

main()
