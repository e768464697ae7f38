package redisembed

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// Limits of one command, as redis-server's defaults (proto-max-bulk-len);
// they only stop a garbled stream from allocating without end.
const (
	maxArgs     = 1 << 24
	maxBulkSize = 512 << 20
)

// errProtocol is a stream that is not a sequence of RESP arrays of bulk
// strings.
var errProtocol = errors.New("protocol error")

// readCommand reads one command: a RESP array of bulk strings, which is
// what every Redis client sends and what the append-only file holds.
// Inline commands (typed into telnet) are not supported. A stream that ends
// inside a command gives io.ErrUnexpectedEOF; one that ends between
// commands gives io.EOF.
func readCommand(r *bufio.Reader) ([]string, error) {
	n, err := readHeader(r, '*')
	if err != nil {
		return nil, err
	}
	if n < 0 || n > maxArgs {
		return nil, fmt.Errorf("%w: array of %d elements", errProtocol, n)
	}
	args := make([]string, 0, n)
	for range n {
		size, err := readHeader(r, '$')
		if err != nil {
			return nil, unexpectedEOF(err)
		}
		if size < 0 || size > maxBulkSize {
			return nil, fmt.Errorf("%w: bulk string of %d bytes", errProtocol, size)
		}
		buf := make([]byte, size+2)
		if _, err := io.ReadFull(r, buf); err != nil {
			return nil, unexpectedEOF(err)
		}
		if buf[size] != '\r' || buf[size+1] != '\n' {
			return nil, fmt.Errorf("%w: bulk string not terminated by CRLF", errProtocol)
		}
		args = append(args, string(buf[:size]))
	}
	return args, nil
}

// readHeader reads a line "<kind><integer>\r\n".
func readHeader(r *bufio.Reader, kind byte) (int, error) {
	line, err := r.ReadSlice('\n')
	if err != nil {
		if len(line) > 0 {
			return 0, unexpectedEOF(err)
		}
		return 0, err
	}
	if len(line) < 4 || line[0] != kind || line[len(line)-2] != '\r' {
		return 0, fmt.Errorf("%w: expected %q, got %q", errProtocol, kind, line)
	}
	n, err := strconv.Atoi(string(line[1 : len(line)-2]))
	if err != nil {
		return 0, fmt.Errorf("%w: bad length %q", errProtocol, line)
	}
	return n, nil
}

func unexpectedEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// appendCommand appends args as a RESP array of bulk strings.
func appendCommand(b []byte, args ...string) []byte {
	b = append(b, '*')
	b = strconv.AppendInt(b, int64(len(args)), 10)
	b = append(b, '\r', '\n')
	for _, a := range args {
		b = append(b, '$')
		b = strconv.AppendInt(b, int64(len(a)), 10)
		b = append(b, '\r', '\n')
		b = append(b, a...)
		b = append(b, '\r', '\n')
	}
	return b
}

// appendError appends a RESP error reply.
func appendError(b []byte, msg string) []byte {
	b = append(b, '-')
	b = append(b, msg...)
	return append(b, '\r', '\n')
}
