"""Everything that talks Stripe: the client, the field mapping, inbound events, outbound pushes, reconciliation."""
