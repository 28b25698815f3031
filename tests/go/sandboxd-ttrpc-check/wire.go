package main

// A protowire-style encoder and decoder, enough for the messages this program sends and
// checks: the messages are written by hand against the field numbers of the .proto files,
// an independent check of the server's generated code.

import (
	"encoding/binary"
	"fmt"
	"math"
)

const (
	wireVarint = 0
	wire64     = 1
	wireBytes  = 2
	wire32     = 5
)

// enc builds one message.
type enc struct{ b []byte }

func (e *enc) tag(field, wire int) { e.b = binary.AppendUvarint(e.b, uint64(field)<<3|uint64(wire)) }

func (e *enc) uint(field int, v uint64) *enc {
	if v != 0 {
		e.tag(field, wireVarint)
		e.b = binary.AppendUvarint(e.b, v)
	}
	return e
}

func (e *enc) boolean(field int, v bool) *enc {
	if v {
		e.uint(field, 1)
	}
	return e
}

func (e *enc) bytes(field int, v []byte) *enc {
	e.tag(field, wireBytes)
	e.b = binary.AppendUvarint(e.b, uint64(len(v)))
	e.b = append(e.b, v...)
	return e
}

func (e *enc) str(field int, v string) *enc {
	if v != "" {
		e.bytes(field, []byte(v))
	}
	return e
}

func (e *enc) msg(field int, m *enc) *enc { return e.bytes(field, m.b) }

// double writes a double field, even at 0 (for an optional field, whose presence counts).
func (e *enc) double(field int, v float64) *enc {
	e.tag(field, wire64)
	e.b = binary.LittleEndian.AppendUint64(e.b, math.Float64bits(v))
	return e
}

// entry writes one entry of a map<string, string> field.
func (e *enc) entry(field int, key, v string) *enc {
	return e.msg(field, msg().str(1, key).str(2, v))
}

func msg() *enc { return &enc{} }

// fields is a decoded message: every value of every field number, in order.
type fields map[int][]value

type value struct {
	wire int
	n    uint64
	b    []byte
}

func decode(b []byte) (fields, error) {
	out := fields{}
	for len(b) > 0 {
		key, n := binary.Uvarint(b)
		if n <= 0 {
			return nil, fmt.Errorf("bad field key")
		}
		b = b[n:]
		field, wire := int(key>>3), int(key&7)
		v := value{wire: wire}
		switch wire {
		case wireVarint:
			v.n, n = binary.Uvarint(b)
			if n <= 0 {
				return nil, fmt.Errorf("field %d: bad varint", field)
			}
			b = b[n:]
		case wireBytes:
			size, n := binary.Uvarint(b)
			if n <= 0 || uint64(len(b)-n) < size {
				return nil, fmt.Errorf("field %d: bad length", field)
			}
			v.b = b[n : n+int(size)]
			b = b[n+int(size):]
		case wire64:
			if len(b) < 8 {
				return nil, fmt.Errorf("field %d: short fixed64", field)
			}
			v.n, b = binary.LittleEndian.Uint64(b), b[8:]
		case wire32:
			if len(b) < 4 {
				return nil, fmt.Errorf("field %d: short fixed32", field)
			}
			v.n, b = uint64(binary.LittleEndian.Uint32(b)), b[4:]
		default:
			return nil, fmt.Errorf("field %d: wire type %d", field, wire)
		}
		out[field] = append(out[field], v)
	}
	return out, nil
}

// last is the field's last value (proto3: the last one wins), or the zero value.
func (f fields) last(field int) value {
	vs := f[field]
	if len(vs) == 0 {
		return value{}
	}
	return vs[len(vs)-1]
}

func (f fields) has(field int) bool { return len(f[field]) > 0 }

func (f fields) str(field int) string { return string(f.last(field).b) }

func (f fields) uint(field int) uint64 { return f.last(field).n }

func (f fields) msg(field int) (fields, error) { return decode(f.last(field).b) }

func (f fields) float(field int) float64 { return math.Float64frombits(f.last(field).n) }

// msgs decodes every value of a repeated message field.
func (f fields) msgs(field int) ([]fields, error) {
	var out []fields
	for _, v := range f[field] {
		m, err := decode(v.b)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

// strMap reads a map<string, string> field.
func (f fields) strMap(field int) (map[string]string, error) {
	out := map[string]string{}
	for _, v := range f[field] {
		entry, err := decode(v.b)
		if err != nil {
			return nil, err
		}
		out[entry.str(1)] = entry.str(2)
	}
	return out, nil
}

// raw is a message whose bytes this program writes and reads itself: ttrpc's codec (gogo
// protobuf) calls Marshal and Unmarshal when a message has them.
type raw struct{ b []byte }

func (r *raw) Reset()                   { r.b = nil }
func (r *raw) String() string           { return fmt.Sprintf("%x", r.b) }
func (r *raw) ProtoMessage()            {}
func (r *raw) Marshal() ([]byte, error) { return r.b, nil }
func (r *raw) Unmarshal(b []byte) error { r.b = append([]byte(nil), b...); return nil }
