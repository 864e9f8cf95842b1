package handlers

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/hybrid-server/hybrid/server"
)

// Parsers must answer every input with a value or a client error, never a
// panic or a 500.
func FuzzPasswordParsers(f *testing.F) {
	f.Add([]byte(`{"password":"x","params":{"cost":4}}`), "$2b$04$uaOauqhMStNeUPy5tCfjRuVS7VCRzbaTC29rew2FLlLO95pn9kOnm")
	f.Add([]byte(`{"password":"x","params":{"n":1024}}`), "$scrypt$ln=10,r=4,p=2$c2FsdA$C2b6szUu8eiErahMKfPJU9m3b00wFiaq4VQFJuDKcLw")
	f.Add([]byte(`{"password":"x","params":{"memory_kib":64}}`), "$argon2id$v=19$m=4096,t=3,p=2$YW5vdGhlcnNhbHQx$tFb3uDB6PZNeeXXZVsepx8spzMD28T2pu2LkD+c2WN0")
	f.Fuzz(func(t *testing.T, body []byte, hash string) {
		for _, algo := range []string{"argon2id", "bcrypt", "scrypt"} {
			if _, _, err := parseHashRequest(algo, body); err != nil {
				clientError(t, err)
			}
		}
		if _, err := parseStoredHash(hash); err != nil {
			clientError(t, err)
		}
		intParam(Params{"level": string(body)}, "level", 1, 1, 9)
	})
}

func FuzzDecompress(f *testing.F) {
	for name, c := range codecs {
		packed, _ := c.compress([]byte("seed data seed data seed data"), c.defLevel)
		f.Add(name, packed)
	}
	f.Fuzz(func(t *testing.T, codec string, input []byte) {
		if _, ok := codecs[codec]; !ok {
			return
		}
		out, err := runDecompress(context.Background(), Params{"codec": codec, "max_output": "65536"}, input)
		if err != nil {
			clientError(t, err)
			return
		}
		if len(out) > 65536 {
			t.Fatalf("output %d bytes past the 64 KiB cap", len(out))
		}
		// What decompresses must compress and come back the same.
		c := codecs[codec]
		packed, err := c.compress(out, c.defLevel)
		if err != nil {
			t.Fatal(err)
		}
		again, err := runDecompress(context.Background(), Params{"codec": codec, "max_output": "65536"}, packed)
		if err != nil || !bytes.Equal(again, out) {
			t.Fatalf("re-round trip: %v", err)
		}
	})
}

func clientError(t *testing.T, err error) {
	t.Helper()
	var se *server.Error
	if !errors.As(err, &se) || se.Status < 400 || se.Status > 499 {
		t.Fatalf("error %v is not a 4xx client error", err)
	}
}
