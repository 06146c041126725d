"""The sync domain: links, applying Stripe customers (inbound), pushing ours (outbound), reconcile decisions."""
