"""The sync domain: links (and how FlexPrice shows them, as integration mappings), applying Stripe customers
(inbound), pushing ours (outbound), reconcile decisions."""
