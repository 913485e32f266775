package webhook

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/http"
	"strconv"
	"testing"
	"time"
)

var testSecret = Secret("0123456789abcdef0123456789abcdef")

func headers(id string, ts time.Time, sig string) http.Header {
	h := http.Header{}
	h.Set(HeaderID, id)
	h.Set(HeaderTimestamp, strconv.FormatInt(ts.Unix(), 10))
	h.Set(HeaderSignature, sig)
	return h
}

func TestSignKnownAnswer(t *testing.T) {
	ts := time.Unix(1700000000, 0)
	body := []byte(`{"type":"job.succeeded"}`)
	m := hmac.New(sha256.New, testSecret)
	m.Write([]byte("msg_1.1700000000." + string(body)))
	want := "v1," + base64.StdEncoding.EncodeToString(m.Sum(nil))
	if got := Sign(testSecret, "msg_1", ts, body); got != want {
		t.Fatalf("Sign = %s, want %s", got, want)
	}
}

func TestVerify(t *testing.T) {
	now := time.Now()
	body := []byte(`{"a":1}`)
	good := Sign(testSecret, "msg_1", now, body)
	if err := Verify(testSecret, headers("msg_1", now, good), body, now, time.Minute); err != nil {
		t.Fatalf("good message: %v", err)
	}
	other := Sign(Secret("another-secret-of-24-bytes!!"), "msg_1", now, body)
	if err := Verify(testSecret, headers("msg_1", now, other+" "+good), body, now, time.Minute); err != nil {
		t.Fatalf("rotated keys: %v", err)
	}
	cases := map[string]struct {
		h    http.Header
		body []byte
		want error
	}{
		"tampered body": {headers("msg_1", now, good), []byte(`{"a":2}`), ErrSignature},
		"wrong secret":  {headers("msg_1", now, other), body, ErrSignature},
		"other id":      {headers("msg_2", now, good), body, ErrSignature},
		"stale":         {headers("msg_1", now.Add(-time.Hour), Sign(testSecret, "msg_1", now.Add(-time.Hour), body)), body, ErrTimestamp},
		"missing":       {http.Header{}, body, ErrMissingHeaders},
	}
	for name, c := range cases {
		if err := Verify(testSecret, c.h, c.body, now, time.Minute); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", name, err, c.want)
		}
	}
}

func TestParseSecret(t *testing.T) {
	s, err := NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	k, err := ParseSecret(s)
	if err != nil || len(k) != 32 {
		t.Fatalf("round trip: %v %d", err, len(k))
	}
	if k.String() != "whsec_<redacted>" {
		t.Fatal("String reveals the key")
	}
	for _, bad := range []string{"", "abc", "whsec_!!", "whsec_" + base64.StdEncoding.EncodeToString([]byte("short"))} {
		if _, err := ParseSecret(bad); err == nil {
			t.Errorf("ParseSecret(%q) accepted", bad)
		}
	}
}

func TestValidateURL(t *testing.T) {
	allow := []string{"hooks.example.com", "*.corp.example"}
	cases := []struct {
		url   string
		allow []string
		ok    bool
	}{
		{"https://hooks.example.com/x", nil, true},
		{"http://127.0.0.1:8080/x", nil, true},
		{"ftp://hooks.example.com/x", nil, false},
		{"/relative", nil, false},
		{"https://user:pw@hooks.example.com/", nil, false},
		{"https://hooks.example.com/#frag", nil, false},
		{"https://HOOKS.example.com/x", allow, true},
		{"https://a.corp.example/x", allow, true},
		{"https://corp.example/x", allow, false},
		{"https://evil.example.com/x", allow, false},
	}
	for _, c := range cases {
		if err := ValidateURL(c.url, c.allow); (err == nil) != c.ok {
			t.Errorf("ValidateURL(%q, %v) = %v, want ok=%v", c.url, c.allow, err, c.ok)
		}
	}
}

func TestSchedule(t *testing.T) {
	s := Schedule{Base: time.Second, Max: time.Minute, Window: time.Hour}
	first := time.Unix(0, 0)
	prev := time.Duration(0)
	for n := 1; n <= 200; n++ {
		next, _ := s.Next(n, first, first, nil)
		d := next.Sub(first)
		if d < prev || d > s.Max || d <= 0 {
			t.Fatalf("attempt %d: delay %s after %s (max %s)", n, d, prev, s.Max)
		}
		prev = d
	}
	if _, giveUp := s.Next(3, first, first.Add(time.Hour), nil); !giveUp {
		t.Fatal("no give-up past the window")
	}
	j := Schedule{Base: 10 * time.Second, Max: time.Minute, Window: time.Hour, Jitter: 0.2}
	for _, r := range []float64{0, 0.5, 0.999} {
		next, _ := j.Next(1, first, first, func() float64 { return r })
		if d := next.Sub(first); d < 8*time.Second || d > 12*time.Second {
			t.Fatalf("jitter %v: delay %s outside ±20%% of 10s", r, d)
		}
	}
	if (Schedule{Base: 2, Max: 1, Window: 1}).Validate() == nil || DefaultSchedule.Validate() != nil {
		t.Fatal("Validate")
	}
}

func TestSenderAgainstReceiver(t *testing.T) {
	rcv, err := NewReceiver(testSecret)
	if err != nil {
		t.Fatal(err)
	}
	defer rcv.Close()
	rcv.Script(FaultStatus500, FaultStatus410, FaultTimeout, FaultCloseConn)
	s := &Sender{Secret: testSecret, Timeout: 300 * time.Millisecond}
	send := func() Result { return s.Send(context.Background(), rcv.URL(), "msg_x", time.Now(), []byte(`{}`)) }
	if r := send(); r.Err == nil || !r.Retry || r.Status != 500 {
		t.Fatalf("500: %+v", r)
	}
	if r := send(); r.Err == nil || r.Retry || r.Status != 410 {
		t.Fatalf("410: %+v", r)
	}
	if r := send(); r.Err == nil || !r.Retry {
		t.Fatalf("timeout: %+v", r)
	}
	if r := send(); r.Err == nil || !r.Retry {
		t.Fatalf("closed connection: %+v", r)
	}
	if r := send(); r.Err != nil {
		t.Fatalf("delivery: %+v", r)
	}
	d := rcv.Deliveries()
	if len(d) != 1 || !d[0].Verified || d[0].ID != "msg_x" {
		t.Fatalf("deliveries: %+v", d)
	}
	if n := len(rcv.Attempts()); n != 5 {
		t.Fatalf("attempts: %d", n)
	}
}

func TestSenderDoesNotFollowRedirects(t *testing.T) {
	srv := &http.Server{Handler: http.RedirectHandler("http://127.0.0.1:1/elsewhere", http.StatusFound)}
	rcv, err := NewReceiver(testSecret) // only for a free port and its lifetime
	if err != nil {
		t.Fatal(err)
	}
	rcv.srv.Handler = srv.Handler
	defer rcv.Close()
	r := (&Sender{Secret: testSecret}).Send(context.Background(), rcv.URL(), "m", time.Now(), nil)
	if r.Err == nil || r.Retry || r.Status != http.StatusFound {
		t.Fatalf("redirect: %+v", r)
	}
}
