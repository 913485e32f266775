// Package webhook signs, sends and verifies the webhooks the coordinator
// delivers when a job ends, per the Standard Webhooks specification
// (https://www.standardwebhooks.com/), so receivers can check them with any
// of that specification's libraries.
//
// Every message carries three headers: webhook-id, the same on every
// retry so a receiver can drop duplicates (delivery is at least once);
// webhook-timestamp, Unix seconds, so a receiver can refuse a captured
// message replayed later; and webhook-signature, "v1," and the base64
// HMAC-SHA256 of "id.timestamp.body" under the shared "whsec_" secret.
// Verify accepts several space-separated signatures, so a sender can sign
// with an old and a new key while receivers switch.
//
// A Sender makes one attempt per call, bounded by its timeout even against
// a receiver that accepts the connection and never answers, and never
// follows a redirect. ValidateURL checks a URL when a job is submitted, so
// a bad one is refused with a 400 rather than failing a day of retries.
//
// # Retry schedule
//
// After the n-th failed attempt the next comes min(Max, Base·2^(n-1))
// later, scaled by a random factor in [1-Jitter, 1+Jitter] so that senders
// retrying after the same outage do not all arrive at once. Delivery is
// abandoned when the next attempt would start more than Window after the
// first, or at once when the receiver answers a 4xx other than 408 and 429
// (or a 3xx): those say the request itself is wrong, and repeating it
// cannot help. With DefaultSchedule (1 s, 10 min, 24 h, ±20 %) the delays
// are about 1 s, 2 s, 4 s, … 8 min 32 s (17 min in all), then 10 min each:
// about 150 attempts, quick through a blip and still trying at a modest
// rate through a day-long outage.
//
// Receiver is a real HTTP receiver for tests, scripted with Faults.
package webhook
