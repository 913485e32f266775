// Package webhook signs, sends and verifies job webhooks per the Standard
// Webhooks specification: every message carries webhook-id (the same on
// every retry, so receivers can deduplicate), webhook-timestamp (Unix
// seconds) and webhook-signature ("v1," + base64 HMAC-SHA256 of
// "id.timestamp.body" under the shared "whsec_" secret).
//
// Retry schedule: after the n-th failed attempt the next comes
// min(Max, Base·2^(n-1)) later, scaled by a random factor in
// [1-Jitter, 1+Jitter] so that receivers recovering from an outage are not
// hit by every sender at once; delivery is abandoned once the next attempt
// would fall more than Window after the first. The defaults (1 s base,
// 10 min cap, 24 h window, ±20 %) retry quickly through blips and keep
// trying through a day-long outage at a modest rate. A receiver answering
// a permanent 4xx (other than 408 and 429) is not retried.
package webhook
