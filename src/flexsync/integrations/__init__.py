"""FlexPrice's integrations API: link, unlink and list a customer's Stripe mappings (`/v1/integrations`)."""
