package handlers

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/hybrid-server/hybrid/server"
	"github.com/valyala/fasthttp"
)

// The JSON request bodies (the password endpoints) are read by one strict
// decoder, because encoding/json is lenient where an attacker profits: it
// matches keys case-insensitively ({"PASSWORD":…} fills "password"), keeps
// the last of duplicate keys (two parsers of one body can disagree on which
// password was meant), and turns invalid UTF-8 and lone surrogate escapes
// into U+FFFD (so two different passwords hash alike). Here:
//
//   - a body is one object and nothing after it, of at most jsonBodyLimit
//     bytes (Workload.MaxBody);
//   - its keys must match a known field exactly, once each;
//   - its strings are valid UTF-8 with no lone surrogate escape;
//   - an error names at most a short, quoted prefix of any value it echoes.

// jsonBodyLimit bounds the body of a JSON endpoint: a password request is a
// few hundred bytes, and a larger body only costs the parser.
const jsonBodyLimit = 64 << 10

// jsonField decodes the raw value of one field.
type jsonField func(raw json.RawMessage) error

// decodeObject decodes input, one JSON object, calling fields[key] with the
// raw value of each key. A key not in fields, a repeated key, or anything
// but one object is a 400 with code; where names the object in messages
// ("body", "params").
func decodeObject(where, code string, input []byte, fields map[string]jsonField) error {
	bad := func(format string, args ...any) error {
		return server.Errorf(fasthttp.StatusBadRequest, code, where+": "+format, args...)
	}
	if !utf8.Valid(input) {
		return bad("not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(input))
	dec.UseNumber()
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return bad("want a JSON object")
	}
	seen := make(map[string]bool, len(fields))
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return bad("malformed JSON: %s", jsonErr(err))
		}
		key := tok.(string) // an object's keys are strings, or Token fails
		field, ok := fields[key]
		if !ok {
			return bad("unknown field %s; known: %s", server.Quote(key), fieldNames(fields))
		}
		if seen[key] {
			return bad("duplicate field %s", server.Quote(key))
		}
		seen[key] = true
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return bad("malformed JSON: %s", jsonErr(err))
		}
		if err := field(raw); err != nil {
			return err
		}
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return bad("malformed JSON: %s", jsonErr(err))
	}
	if _, err := dec.Token(); err != io.EOF {
		return bad("trailing data after the JSON object")
	}
	return nil
}

// jsonErr describes a decoding error without the input: encoding/json's
// messages can quote the offending bytes.
func jsonErr(err error) string {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return "syntax error at byte " + strconv.FormatInt(syn.Offset, 10)
	case errors.As(err, &typ):
		return "a " + typ.Value + " where " + typ.Type.String() + " belongs"
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return "unexpected end of input"
	}
	return "not a JSON object"
}

func fieldNames(fields map[string]jsonField) string {
	return strings.Join(slices.Sorted(maps.Keys(fields)), ", ")
}

// stringField decodes a JSON string into *dst, refusing a lone surrogate
// escape (\ud800 with no low half): encoding/json would make it U+FFFD. The
// body is valid UTF-8 already (decodeObject).
func stringField(where, name string, dst **string) jsonField {
	return func(raw json.RawMessage) error {
		if len(raw) == 0 || raw[0] != '"' {
			return server.Errorf(fasthttp.StatusBadRequest, server.CodeBadRequest, "%s: %q must be a string", where, name)
		}
		if loneSurrogate(raw) {
			return server.Errorf(fasthttp.StatusBadRequest, server.CodeBadRequest,
				"%s: %q has a lone UTF-16 surrogate escape; send the text as UTF-8", where, name)
		}
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return server.Errorf(fasthttp.StatusBadRequest, server.CodeBadRequest, "%s: %q: %s", where, name, jsonErr(err))
		}
		*dst = &s
		return nil
	}
}

// intField decodes a JSON integer (no fraction, no exponent) into *dst.
func intField(where, name string, dst *int) jsonField {
	return func(raw json.RawMessage) error {
		n, err := strconv.Atoi(string(raw))
		if err != nil {
			return badParam("%s.%s: want an integer, got %s", where, name, server.Quote(string(raw)))
		}
		*dst = n
		return nil
	}
}

// loneSurrogate reports whether the JSON string literal s has a \uD800–
// \uDFFF escape that is not a high half followed at once by a low half.
func loneSurrogate(s []byte) bool {
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' || i+1 >= len(s) {
			continue
		}
		if s[i+1] != 'u' {
			i++ // \" \\ \n …: skip the escaped byte
			continue
		}
		r, ok := hex4(s[i+2:])
		if !ok {
			return false // malformed: json.Unmarshal refuses it
		}
		i += 5
		switch {
		case r >= 0xdc00 && r <= 0xdfff:
			return true // a low half first
		case r >= 0xd800 && r <= 0xdbff:
			if i+6 >= len(s) || s[i+1] != '\\' || s[i+2] != 'u' {
				return true
			}
			lo, ok := hex4(s[i+3:])
			if !ok || lo < 0xdc00 || lo > 0xdfff {
				return true
			}
			i += 6
		}
	}
	return false
}

func hex4(b []byte) (rune, bool) {
	if len(b) < 4 {
		return 0, false
	}
	n, err := strconv.ParseUint(string(b[:4]), 16, 16)
	return rune(n), err == nil
}
