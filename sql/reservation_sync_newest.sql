-- When the reservation copy was last refreshed from Helsenorge (NULL: never).
SELECT MAX(synced_at) AS synced_at FROM reservation_sync
