// Command s3server is a minimal S3-protocol server over a local directory, written for
// benchmarks/s3.py (issue #17): the `go` column, a loopback server that takes bytes in about
// as fast as the disk, so that the benchmark measures the client rather than the server.
//
//	s3server -dir DATA -addr 127.0.0.1:PORT [-log FILE] [-cert CERT -key KEY]
//
// Path-style requests only (http://HOST:PORT/BUCKET/KEY), HTTP/1.1. A bucket is a directory
// DATA/BUCKET, an object the file DATA/BUCKET/KEY (a key's "/" are directories).
//
// What it serves, as S3 does: CreateBucket, HeadBucket, DeleteBucket, ListBuckets; PutObject
// (If-None-Match: * → 412 when the key exists, If-Match: ETAG → 412 unless it matches);
// HeadObject and GetObject with one Range (206 + Content-Range, 416 + "bytes */SIZE" outside
// the object or on an empty one; an unparsable Range is ignored: 200), If-Match (412) and
// If-None-Match (304); DeleteObject (204, also for a missing key) and DeleteObjects (the
// POST ?delete obstore's delete sends); ListObjectsV2 and
// ListObjects (prefix, delimiter, start-after / marker, continuation, max-keys,
// encoding-type=url); multipart: CreateMultipartUpload, UploadPart, CompleteMultipartUpload
// (conditional like PutObject; parts checked: ascending, known, ETags equal, all but the last
// at least 5 MiB; a repeated completion of the same upload answers as the first did),
// AbortMultipartUpload, ListMultipartUploads (prefix, delimiter, markers, max-uploads,
// encoding-type=url), ListParts. Bodies may be plain or aws-chunked (STREAMING-* payloads).
// Anything else is 501 NotImplemented.
//
// What it does NOT do, on purpose (it stands in for a server on its own machine, whose
// checks cost that machine's CPU, not the client's):
//   - no authentication: signatures are not verified (any or no Authorization is accepted);
//   - no checksums: x-amz-content-sha256, Content-MD5 and x-amz-checksum-* are not verified
//     and no MD5 of the body is computed. An ETag is 32 hex digits made of a counter and the
//     size ("%016x%016x"), unique per write but not the body's MD5; a multipart object's ETag
//     is S3's formula over its parts' ETags (MD5 of their 16-byte values, "-N"), so a client
//     that recomputes it from the part ETags (ours does, after a lost completion answer)
//     finds it equal. Objects written before the server started get an ETag made of the
//     file's inode, mtime and size.
//   - no versioning, ACLs, tags, user metadata (x-amz-meta-* are dropped), storage classes,
//     CopyObject, presigned URLs, virtual-host addressing, HTTP/2.
//   - keys must map to files: no empty, "." or ".." segment, no trailing "/", at most 1024
//     bytes; a key that is a "directory" of another ("a" beside "a/b") is refused (409).
//
// Durability, like a local backup's final fsync: an object is written to a temporary file in
// DATA/.s3server, fsynced, renamed to its key and its directory fsynced (and any directory
// created for it) before the answer is sent, for PutObject and CompleteMultipartUpload alike.
// Multipart parts are written straight into their place in one file per upload (part N at
// (N-1) x the size of the first part that arrived), so a completion whose parts are all in
// place (every client that uses equal parts) is a truncate, an fsync and a rename; any other
// layout (a re-sent part, unequal parts) is assembled with copy_file_range into a new file.
// Uploads in progress live in memory: a restart forgets them (their files are removed).
package main

import (
	"bufio"
	"crypto/md5"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	xmlNS       = "http://s3.amazonaws.com/doc/2006-03-01/"
	minPartSize = 5 << 20
	maxKeyLen   = 1024
	copyBuf     = 1 << 20
	internalDir = ".s3server"
)

var bufPool = sync.Pool{New: func() any { b := make([]byte, copyBuf); return &b }}

// ---------------------------------------------------------------------------------------
// the server's state

type objMeta struct {
	etag  string
	ino   uint64
	size  int64
	mtime int64
}

type part struct {
	num    int
	etag   string
	size   int64
	path   string // the file holding it
	off    int64  // where in that file
	inSlot bool   // in the upload's data file at (num-1) x stride
	mod    time.Time
}

type upload struct {
	id, bucket, key string
	initiated       time.Time
	dir             string
	data            *os.File // parts in place
	mu              sync.Mutex
	stride          int64 // 0 until the first part with a known size
	slots           map[int]bool
	parts           map[int]*part
	writers         sync.WaitGroup // writes into data and early syncs in progress
	done            bool           // completing or aborted: no new part
	unsynced        int64          // bytes written into data since the last early fdatasync
	syncing         bool           // an early fdatasync is running
	syncErr         error          // the first error of an early sync (reported at completion)
}

// Early writeback, as the local backup does it (src/dsbackup/storage/writeback.py): each
// part's pages are handed to the disk as soon as they are written (sync_file_range
// SYNC_FILE_RANGE_WRITE, which does not wait), and every syncStep bytes a background
// fdatasync commits them with their block allocations, so the completion's fsync is left
// with the tail only. Durability still rests on the completion's fsync.
const (
	syncFileRangeWrite = 2
	syncStep           = 64 << 20
)

// wroteSlot is called after a part's n bytes at off reached the data file.
func (u *upload) wroteSlot(off, n int64) {
	fd := int(u.data.Fd())
	if err := syscall.SyncFileRange(fd, off, n, syncFileRangeWrite); err != nil && err != syscall.ENOSYS {
		u.noteSyncErr(err)
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	u.unsynced += n
	if u.unsynced < syncStep || u.syncing || u.done {
		return
	}
	u.unsynced, u.syncing = 0, true
	u.writers.Add(1) // completion and abort wait for it before they touch the file
	go func() {
		defer u.writers.Done()
		err := syscall.Fdatasync(fd)
		u.mu.Lock()
		u.syncing = false
		u.mu.Unlock()
		if err != nil {
			u.noteSyncErr(err)
		}
	}()
}

func (u *upload) noteSyncErr(err error) {
	u.mu.Lock()
	if u.syncErr == nil {
		u.syncErr = err
	}
	u.mu.Unlock()
}

type completed struct {
	bucket, key, etag string
	ino               uint64
}

type server struct {
	root    string
	tmp     string
	seq     uint64
	mu      sync.Mutex // uploads, completed, etags; a commit's check and rename
	uploads map[string]*upload
	done    map[string]completed
	etags   map[string]objMeta
}

func (s *server) next() uint64 { return atomic.AddUint64(&s.seq, 1) }

func (s *server) newETag(size int64) string {
	return fmt.Sprintf("%016x%016x", s.next(), uint64(size))
}

// ---------------------------------------------------------------------------------------
// errors

type s3err struct {
	status        int
	code, message string
}

func (e *s3err) Error() string { return e.code + ": " + e.message }

func fail(status int, code, msg string) *s3err { return &s3err{status, code, msg} }

var (
	errNoSuchBucket = fail(404, "NoSuchBucket", "The specified bucket does not exist")
	errNoSuchKey    = fail(404, "NoSuchKey", "The specified key does not exist.")
	errNoSuchUpload = fail(404, "NoSuchUpload", "The specified multipart upload does not exist.")
	errPrecondition = fail(412, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold")
)

type errorDoc struct {
	XMLName  xml.Name `xml:"Error"`
	Code     string
	Message  string
	Resource string
}

func writeError(w http.ResponseWriter, r *http.Request, err error) {
	var e *s3err
	if !errors.As(err, &e) {
		e = fail(500, "InternalError", err.Error())
	}
	if e.status == 304 {
		w.WriteHeader(304)
		return
	}
	body, _ := xml.Marshal(errorDoc{Code: e.code, Message: e.message, Resource: r.URL.Path})
	w.Header().Set("Content-Type", "application/xml")
	w.Header().Set("Content-Length", strconv.Itoa(len(xml.Header)+len(body)))
	w.WriteHeader(e.status)
	if r.Method != http.MethodHead {
		io.WriteString(w, xml.Header)
		w.Write(body)
	}
}

func writeXML(w http.ResponseWriter, v any) {
	body, err := xml.Marshal(v)
	if err != nil {
		panic(err)
	}
	w.Header().Set("Content-Type", "application/xml")
	w.Header().Set("Content-Length", strconv.Itoa(len(xml.Header)+len(body)))
	w.WriteHeader(200)
	io.WriteString(w, xml.Header)
	w.Write(body)
}

// ---------------------------------------------------------------------------------------
// names

func validBucket(b string) bool {
	if len(b) < 3 || len(b) > 63 || b[0] == '.' || b[0] == '-' {
		return false
	}
	for _, c := range []byte(b) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

func checkKey(k string) error {
	if k == "" || len(k) > maxKeyLen || strings.HasSuffix(k, "/") || strings.ContainsRune(k, 0) {
		return fail(400, "InvalidArgument", "this server stores keys as files: the key must be 1-1024 bytes, not end with '/'")
	}
	for _, seg := range strings.Split(k, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return fail(400, "InvalidArgument", "this server stores keys as files: no empty, '.' or '..' segment in a key")
		}
	}
	return nil
}

func (s *server) bucketDir(b string) (string, error) {
	if !validBucket(b) {
		return "", fail(400, "InvalidBucketName", "The specified bucket is not valid.")
	}
	d := filepath.Join(s.root, b)
	if st, err := os.Stat(d); err != nil || !st.IsDir() {
		return "", errNoSuchBucket
	}
	return d, nil
}

// keyPath: the file of bucket/key (the bucket must exist).
func (s *server) keyPath(b, k string) (string, error) {
	d, err := s.bucketDir(b)
	if err != nil {
		return "", err
	}
	if err := checkKey(k); err != nil {
		return "", err
	}
	return filepath.Join(d, filepath.FromSlash(k)), nil
}

// s3 URL encoding (encoding-type=url): all but A-Z a-z 0-9 - . _ ~ / as %XX, so that both
// unquote and unquote_plus give the key back.
func urlEncode(v string) string {
	var b strings.Builder
	for _, c := range []byte(v) {
		if c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' ||
			c == '-' || c == '.' || c == '_' || c == '~' || c == '/' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// ---------------------------------------------------------------------------------------
// files

func fsyncPath(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// mkdirs makes the directories of rel under base, fsyncing the parent of each one made.
func mkdirs(base, rel string) error {
	if rel == "." || rel == "" {
		return nil
	}
	cur := base
	for _, seg := range strings.Split(filepath.ToSlash(rel), "/") {
		next := filepath.Join(cur, seg)
		st, err := os.Stat(next)
		switch {
		case err == nil && st.IsDir():
		case err == nil:
			return fail(409, "KeyConflict", "a prefix of the key is an object (this server stores keys as files)")
		case errors.Is(err, fs.ErrNotExist):
			if err := os.Mkdir(next, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
				return err
			}
			if err := fsyncPath(cur); err != nil {
				return err
			}
		default:
			return err
		}
		cur = next
	}
	return nil
}

func identity(st os.FileInfo) (ino uint64, mtime int64) {
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		ino = sys.Ino
	}
	return ino, st.ModTime().UnixNano()
}

// etagOf: the ETag the server gave the file at path, else one of its identity.
func (s *server) etagOf(path string, st os.FileInfo) string {
	ino, mtime := identity(st)
	s.mu.Lock()
	m, ok := s.etags[path]
	s.mu.Unlock()
	if ok && m.ino == ino && m.size == st.Size() && m.mtime == mtime {
		return m.etag
	}
	return fmt.Sprintf("%08x%08x%016x", uint32(ino), uint32(mtime), uint64(st.Size()))
}

// commit renames the fsynced file tmp to bucket/key if the conditions hold, fsyncs the
// directory, and records its ETag. Under the server's lock: no other commit in between.
func (s *server) commit(tmp, bucket, key string, r *http.Request, etag string) error {
	dst, err := s.keyPath(bucket, key)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st, err := os.Stat(dst)
	exists := err == nil
	if exists && st.IsDir() {
		return fail(409, "KeyConflict", "the key is a prefix of other objects (this server stores keys as files)")
	}
	if err := preconditions(r, exists, func() string {
		ino, mtime := identity(st)
		if m, ok := s.etags[dst]; ok && m.ino == ino && m.size == st.Size() && m.mtime == mtime {
			return m.etag
		}
		return fmt.Sprintf("%08x%08x%016x", uint32(ino), uint32(mtime), uint64(st.Size()))
	}); err != nil {
		return err
	}
	rel, _ := filepath.Rel(filepath.Join(s.root, bucket), filepath.Dir(dst))
	if err := mkdirs(filepath.Join(s.root, bucket), rel); err != nil {
		return err
	}
	if err := os.Rename(tmp, dst); err != nil {
		return err
	}
	if err := fsyncPath(filepath.Dir(dst)); err != nil {
		return err
	}
	nst, err := os.Stat(dst)
	if err != nil {
		return err
	}
	ino, mtime := identity(nst)
	s.etags[dst] = objMeta{etag, ino, nst.Size(), mtime}
	return nil
}

// preconditions of a write: If-None-Match: * and If-Match: ETAG.
func preconditions(r *http.Request, exists bool, etag func() string) error {
	if inm := r.Header.Get("If-None-Match"); inm != "" {
		if strings.TrimSpace(inm) != "*" {
			return fail(501, "NotImplemented", "If-None-Match on a write supports only '*'")
		}
		if exists {
			return errPrecondition
		}
	}
	if im := r.Header.Get("If-Match"); im != "" {
		if !exists {
			return errNoSuchKey
		}
		if !etagMatches(im, etag()) {
			return errPrecondition
		}
	}
	return nil
}

func etagMatches(header, etag string) bool {
	for _, v := range strings.Split(header, ",") {
		v = strings.TrimSpace(v)
		v = strings.TrimPrefix(v, "W/")
		if v == "*" || strings.Trim(v, `"`) == etag {
			return true
		}
	}
	return false
}

// ---------------------------------------------------------------------------------------
// request bodies

// body: the request's payload (aws-chunked decoded) and its size, -1 when unknown.
func body(r *http.Request) (io.Reader, int64, error) {
	sha := r.Header.Get("X-Amz-Content-Sha256")
	if strings.HasPrefix(sha, "STREAMING-") || strings.Contains(r.Header.Get("Content-Encoding"), "aws-chunked") {
		size := int64(-1)
		if d := r.Header.Get("X-Amz-Decoded-Content-Length"); d != "" {
			n, err := strconv.ParseInt(d, 10, 64)
			if err != nil || n < 0 {
				return nil, 0, fail(400, "InvalidArgument", "bad x-amz-decoded-content-length")
			}
			size = n
		}
		return &awsChunked{r: bufio.NewReaderSize(r.Body, 64<<10)}, size, nil
	}
	return r.Body, r.ContentLength, nil
}

// awsChunked decodes an aws-chunked body: "HEX[;chunk-signature=...]\r\nDATA\r\n" ...
// "0[;...]\r\n" then trailers and "\r\n". Signatures and trailing checksums are not checked.
type awsChunked struct {
	r    *bufio.Reader
	left int64
	eof  bool
}

func (c *awsChunked) line() (string, error) {
	l, err := c.r.ReadString('\n')
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return "", err
	}
	return strings.TrimRight(l, "\r\n"), nil
}

func (c *awsChunked) Read(p []byte) (int, error) {
	if c.eof {
		return 0, io.EOF
	}
	if c.left == 0 {
		l, err := c.line()
		if err != nil {
			return 0, err
		}
		if i := strings.IndexByte(l, ';'); i >= 0 {
			l = l[:i]
		}
		n, err := strconv.ParseInt(strings.TrimSpace(l), 16, 64)
		if err != nil || n < 0 {
			return 0, fail(400, "IncompleteBody", "bad aws-chunked chunk header")
		}
		if n == 0 {
			for { // trailers (x-amz-checksum-*, x-amz-trailer-signature) until an empty line
				t, err := c.line()
				if err != nil || t == "" {
					break
				}
			}
			c.eof = true
			return 0, io.EOF
		}
		c.left = n
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.r.Read(p)
	c.left -= int64(n)
	if c.left == 0 && err == nil {
		if _, err2 := c.line(); err2 != nil { // the CRLF after the chunk's data
			return n, err2
		}
	}
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

// copyAt writes the body to f from off on; the bytes written. A known size must be met
// exactly (else IncompleteBody).
func copyAt(f *os.File, off int64, src io.Reader, size int64) (int64, error) {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	var n int64
	for {
		want := buf
		if size >= 0 && size-n < int64(len(want)) {
			want = want[:size-n+1] // one byte more: a body longer than said is an error
		}
		got, err := src.Read(want)
		if got > 0 {
			if size >= 0 && n+int64(got) > size {
				return n, fail(400, "IncompleteBody", "the body is longer than its declared size")
			}
			if _, werr := f.WriteAt(want[:got], off+n); werr != nil {
				return n, werr
			}
			n += int64(got)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			var e *s3err
			if errors.As(err, &e) {
				return n, err
			}
			return n, fail(400, "IncompleteBody", "the request body ended early: "+err.Error())
		}
	}
	if size >= 0 && n != size {
		return n, fail(400, "IncompleteBody", fmt.Sprintf("got %d bytes of %d", n, size))
	}
	return n, nil
}

// ---------------------------------------------------------------------------------------
// routing

func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := s.route(w, r); err != nil {
		writeError(w, r, err)
	}
}

func (s *server) route(w http.ResponseWriter, r *http.Request) error {
	w.Header().Set("Server", "dsbackup-bench-s3server")
	w.Header().Set("x-amz-request-id", strconv.FormatUint(s.next(), 16))
	path := r.URL.Path
	if !strings.HasPrefix(path, "/") {
		return fail(400, "InvalidURI", "path-style requests only")
	}
	bucket, key, _ := strings.Cut(path[1:], "/")
	q := r.URL.Query()
	if bucket == "" {
		if r.Method == http.MethodGet {
			return s.listBuckets(w)
		}
		return fail(405, "MethodNotAllowed", "not allowed on the service")
	}
	if key == "" {
		return s.bucketOp(w, r, bucket, q)
	}
	_, hasUpload := q["uploadId"]
	switch r.Method {
	case http.MethodPut:
		if r.Header.Get("X-Amz-Copy-Source") != "" {
			return fail(501, "NotImplemented", "CopyObject / UploadPartCopy are not implemented")
		}
		if hasUpload {
			return s.uploadPart(w, r, bucket, key, q)
		}
		if len(q) > 0 {
			return fail(501, "NotImplemented", "object subresource not implemented: "+r.URL.RawQuery)
		}
		return s.putObject(w, r, bucket, key)
	case http.MethodPost:
		if _, ok := q["uploads"]; ok {
			return s.createUpload(w, bucket, key)
		}
		if hasUpload {
			return s.completeUpload(w, r, bucket, key, q.Get("uploadId"))
		}
	case http.MethodDelete:
		if hasUpload {
			return s.abortUpload(w, bucket, key, q.Get("uploadId"))
		}
		if len(q) == 0 {
			return s.deleteObject(w, bucket, key)
		}
	case http.MethodGet, http.MethodHead:
		if hasUpload && r.Method == http.MethodGet {
			return s.listParts(w, bucket, key, q)
		}
		if len(q) == 0 || onlyResponseOverrides(q) {
			return s.getObject(w, r, bucket, key)
		}
	}
	return fail(501, "NotImplemented", r.Method+" "+r.URL.RawQuery+" on an object is not implemented")
}

func onlyResponseOverrides(q map[string][]string) bool {
	for k := range q {
		if !strings.HasPrefix(k, "response-") && k != "partNumber" && k != "versionId" && k != "x-id" {
			return false
		}
	}
	_, pn := q["partNumber"]
	_, v := q["versionId"]
	return !pn && !v
}

// ---------------------------------------------------------------------------------------
// buckets

type bucketsDoc struct {
	XMLName xml.Name `xml:"http://s3.amazonaws.com/doc/2006-03-01/ ListAllMyBucketsResult"`
	Owner   struct{ ID, DisplayName string }
	Buckets []bucketEntry `xml:"Buckets>Bucket"`
}

type bucketEntry struct {
	Name         string
	CreationDate string
}

func (s *server) listBuckets(w http.ResponseWriter) error {
	ents, err := os.ReadDir(s.root)
	if err != nil {
		return err
	}
	doc := bucketsDoc{}
	doc.Owner.ID, doc.Owner.DisplayName = "bench", "bench"
	for _, e := range ents {
		if e.IsDir() && validBucket(e.Name()) {
			info, _ := e.Info()
			doc.Buckets = append(doc.Buckets, bucketEntry{e.Name(), info.ModTime().UTC().Format(isoTime)})
		}
	}
	writeXML(w, doc)
	return nil
}

const isoTime = "2006-01-02T15:04:05.000Z"

func (s *server) bucketOp(w http.ResponseWriter, r *http.Request, bucket string, q map[string][]string) error {
	switch r.Method {
	case http.MethodPut:
		if !validBucket(bucket) {
			return fail(400, "InvalidBucketName", "The specified bucket is not valid.")
		}
		io.Copy(io.Discard, r.Body) // CreateBucketConfiguration: one region here
		d := filepath.Join(s.root, bucket)
		if err := os.Mkdir(d, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
		if err := fsyncPath(s.root); err != nil {
			return err
		}
		w.Header().Set("Location", "/"+bucket)
		w.WriteHeader(200)
		return nil
	case http.MethodHead:
		if _, err := s.bucketDir(bucket); err != nil {
			return err
		}
		w.WriteHeader(200)
		return nil
	case http.MethodDelete:
		d, err := s.bucketDir(bucket)
		if err != nil {
			return err
		}
		if err := os.Remove(d); err != nil {
			return fail(409, "BucketNotEmpty", "The bucket you tried to delete is not empty")
		}
		w.WriteHeader(204)
		return nil
	case http.MethodGet:
		d, err := s.bucketDir(bucket)
		if err != nil {
			return err
		}
		if _, ok := q["uploads"]; ok {
			return s.listUploads(w, bucket, q)
		}
		if _, ok := q["location"]; ok {
			writeXML(w, struct {
				XMLName xml.Name `xml:"http://s3.amazonaws.com/doc/2006-03-01/ LocationConstraint"`
			}{})
			return nil
		}
		for k := range q {
			switch k {
			case "list-type", "prefix", "delimiter", "continuation-token", "start-after", "max-keys",
				"encoding-type", "fetch-owner", "marker":
			default:
				return fail(501, "NotImplemented", "bucket subresource not implemented: "+k)
			}
		}
		return s.listObjects(w, bucket, d, q)
	case http.MethodPost:
		if _, ok := q["delete"]; ok {
			return s.deleteObjects(w, r, bucket)
		}
		return fail(501, "NotImplemented", "bucket POST not implemented: "+r.URL.RawQuery)
	}
	return fail(405, "MethodNotAllowed", "not allowed on a bucket")
}

// ---------------------------------------------------------------------------------------
// objects

func (s *server) putObject(w http.ResponseWriter, r *http.Request, bucket, key string) error {
	if _, err := s.keyPath(bucket, key); err != nil {
		return err
	}
	src, size, err := body(r)
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(s.tmp, "put-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // gone by the rename when committed
	n, err := copyAt(f, 0, src, size)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	etag := s.newETag(n)
	if err := s.commit(tmp, bucket, key, r, etag); err != nil {
		return err
	}
	w.Header().Set("ETag", `"`+etag+`"`)
	w.WriteHeader(200)
	return nil
}

type deleteReq struct {
	Quiet   bool
	Objects []struct{ Key string } `xml:"Object"`
}

type deleteDoc struct {
	XMLName xml.Name      `xml:"http://s3.amazonaws.com/doc/2006-03-01/ DeleteResult"`
	Deleted []deletedKey  `xml:"Deleted"`
	Errors  []deleteError `xml:"Error"`
}

type deletedKey struct{ Key string }

type deleteError struct{ Key, Code, Message string }

// deleteObjects: POST /BUCKET?delete (DeleteObjects, as obstore's delete sends it).
func (s *server) deleteObjects(w http.ResponseWriter, r *http.Request, bucket string) error {
	if _, err := s.bucketDir(bucket); err != nil {
		return err
	}
	raw, err := io.ReadAll(io.LimitReader(r.Body, 4<<20))
	if err != nil {
		return fail(400, "IncompleteBody", err.Error())
	}
	var req deleteReq
	if err := xml.Unmarshal(raw, &req); err != nil || len(req.Objects) == 0 || len(req.Objects) > 1000 {
		return fail(400, "MalformedXML", "The XML you provided was not well-formed or did not validate against our published schema")
	}
	var doc deleteDoc
	for _, o := range req.Objects {
		if err := s.removeObject(bucket, o.Key); err != nil {
			var e *s3err
			if !errors.As(err, &e) {
				e = fail(500, "InternalError", err.Error())
			}
			doc.Errors = append(doc.Errors, deleteError{o.Key, e.code, e.message})
		} else if !req.Quiet {
			doc.Deleted = append(doc.Deleted, deletedKey{o.Key})
		}
	}
	writeXML(w, doc)
	return nil
}

func (s *server) deleteObject(w http.ResponseWriter, bucket, key string) error {
	if err := s.removeObject(bucket, key); err != nil {
		return err
	}
	w.WriteHeader(204)
	return nil
}

// removeObject deletes bucket/key (nothing to do when it is not there) and the directories
// it leaves empty, and fsyncs the directory.
func (s *server) removeObject(bucket, key string) error {
	p, err := s.keyPath(bucket, key)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st, err := os.Stat(p)
	if err == nil && !st.IsDir() {
		if err := os.Remove(p); err != nil {
			return err
		}
		delete(s.etags, p)
		// empty directories of the key's prefix go too (as no object remains under them)
		base := filepath.Join(s.root, bucket)
		for d := filepath.Dir(p); d != base && strings.HasPrefix(d, base); d = filepath.Dir(d) {
			if os.Remove(d) != nil {
				break
			}
		}
		if err := fsyncPath(filepath.Dir(p)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// byteRange parses a Range header against size: (first, last, ranged, error). An
// unparsable or multi-range header is ignored (the whole object), as S3 does.
func byteRange(h string, size int64) (int64, int64, bool, error) {
	if h == "" {
		return 0, size - 1, false, nil
	}
	spec := strings.TrimSpace(h)
	if !strings.HasPrefix(spec, "bytes=") || strings.Contains(spec, ",") {
		return 0, size - 1, false, nil
	}
	a, b, ok := strings.Cut(strings.TrimSpace(spec[len("bytes="):]), "-")
	if !ok {
		return 0, size - 1, false, nil
	}
	unsat := fail(416, "InvalidRange", "The requested range is not satisfiable")
	if a == "" { // suffix: the last b bytes
		n, err := strconv.ParseInt(b, 10, 64)
		if err != nil || n < 0 {
			return 0, size - 1, false, nil
		}
		if n == 0 || size == 0 {
			return 0, 0, true, unsat
		}
		if n > size {
			n = size
		}
		return size - n, size - 1, true, nil
	}
	first, err := strconv.ParseInt(a, 10, 64)
	if err != nil || first < 0 {
		return 0, size - 1, false, nil
	}
	last := size - 1
	if b != "" {
		last, err = strconv.ParseInt(b, 10, 64)
		if err != nil || last < first {
			return 0, size - 1, false, nil
		}
	}
	if first >= size {
		return 0, 0, true, unsat
	}
	if last >= size {
		last = size - 1
	}
	return first, last, true, nil
}

func (s *server) getObject(w http.ResponseWriter, r *http.Request, bucket, key string) error {
	p, err := s.keyPath(bucket, key)
	if err != nil {
		return err
	}
	f, err := os.Open(p)
	if err != nil {
		return errNoSuchKey
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if st.IsDir() {
		return errNoSuchKey
	}
	etag := s.etagOf(p, st)
	h := w.Header()
	h.Set("ETag", `"`+etag+`"`)
	h.Set("Last-Modified", st.ModTime().UTC().Format(http.TimeFormat))
	h.Set("Accept-Ranges", "bytes")
	if im := r.Header.Get("If-Match"); im != "" && !etagMatches(im, etag) {
		return errPrecondition
	}
	if inm := r.Header.Get("If-None-Match"); inm != "" && etagMatches(inm, etag) {
		return &s3err{status: 304}
	}
	size := st.Size()
	first, last, ranged, err := byteRange(r.Header.Get("Range"), size)
	if err != nil {
		h.Set("Content-Range", fmt.Sprintf("bytes */%d", size))
		return err
	}
	n := last - first + 1
	if size == 0 {
		n = 0
	}
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Content-Length", strconv.FormatInt(n, 10))
	status := 200
	if ranged {
		status = 206
		h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", first, last, size))
	}
	w.WriteHeader(status)
	if r.Method == http.MethodHead || n == 0 {
		return nil
	}
	if _, err := f.Seek(first, io.SeekStart); err != nil {
		return nil // the status is sent: the short body tells the client
	}
	io.CopyN(w, f, n) // sendfile(2) through the connection's ReadFrom
	return nil
}

// ---------------------------------------------------------------------------------------
// listing objects

type listDoc struct {
	XMLName               xml.Name `xml:"http://s3.amazonaws.com/doc/2006-03-01/ ListBucketResult"`
	Name                  string
	Prefix                string
	Delimiter             string  `xml:",omitempty"`
	Marker                *string `xml:",omitempty"`
	NextMarker            string  `xml:",omitempty"`
	StartAfter            string  `xml:",omitempty"`
	ContinuationToken     string  `xml:",omitempty"`
	NextContinuationToken string  `xml:",omitempty"`
	KeyCount              *int    `xml:",omitempty"`
	MaxKeys               int
	EncodingType          string `xml:",omitempty"`
	IsTruncated           bool
	Contents              []objEntry
	CommonPrefixes        []prefixEntry
}

type objEntry struct {
	Key          string
	LastModified string
	ETag         string
	Size         int64
	StorageClass string
}

type prefixEntry struct{ Prefix string }

type listed struct {
	key  string
	path string
	st   os.FileInfo
}

func (s *server) keysUnder(dir, prefix string) ([]listed, error) {
	start := dir
	if i := strings.LastIndexByte(prefix, '/'); i >= 0 {
		start = filepath.Join(dir, filepath.FromSlash(prefix[:i]))
	}
	var out []listed
	err := filepath.WalkDir(start, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.IsDir() {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		k := filepath.ToSlash(rel)
		if !strings.HasPrefix(k, prefix) || !d.Type().IsRegular() {
			return nil
		}
		st, err := d.Info()
		if err != nil {
			return nil // deleted meanwhile
		}
		out = append(out, listed{k, p, st})
		return nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].key < out[j].key })
	return out, err
}

func maxKeysOf(v string, def int) (int, error) {
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0, fail(400, "InvalidArgument", "bad max-keys")
	}
	if n > 1000 {
		n = 1000
	}
	return n, nil
}

func (s *server) listObjects(w http.ResponseWriter, bucket, dir string, q map[string][]string) error {
	get := func(k string) string {
		if v, ok := q[k]; ok && len(v) > 0 {
			return v[0]
		}
		return ""
	}
	v2 := get("list-type") == "2"
	prefix, delim := get("prefix"), get("delimiter")
	enc := get("encoding-type") == "url"
	maxKeys, err := maxKeysOf(get("max-keys"), 1000)
	if err != nil {
		return err
	}
	after := get("marker")
	if v2 {
		after = get("start-after")
		if tok := get("continuation-token"); tok != "" {
			raw, err := base64.RawURLEncoding.DecodeString(tok)
			if err != nil {
				return fail(400, "InvalidArgument", "bad continuation-token")
			}
			after = string(raw)
		}
	}
	keys, err := s.keysUnder(dir, prefix)
	if err != nil {
		return err
	}
	e := func(v string) string {
		if enc {
			return urlEncode(v)
		}
		return v
	}
	doc := listDoc{Name: bucket, Prefix: e(prefix), Delimiter: e(delim), MaxKeys: maxKeys}
	if enc {
		doc.EncodingType = "url"
	}
	if v2 {
		doc.StartAfter = e(get("start-after"))
		doc.ContinuationToken = get("continuation-token")
	} else {
		m := e(after)
		doc.Marker = &m
	}
	count, last := 0, ""
	for _, l := range keys {
		item, isPrefix := l.key, false
		if delim != "" {
			if i := strings.Index(l.key[len(prefix):], delim); i >= 0 {
				item, isPrefix = l.key[:len(prefix)+i+len(delim)], true
			}
		}
		if item <= after || (isPrefix && item == last) {
			continue
		}
		if count == maxKeys {
			doc.IsTruncated = true
			break
		}
		if isPrefix {
			doc.CommonPrefixes = append(doc.CommonPrefixes, prefixEntry{e(item)})
		} else {
			doc.Contents = append(doc.Contents, objEntry{e(l.key), l.st.ModTime().UTC().Format(isoTime),
				`"` + s.etagOf(l.path, l.st) + `"`, l.st.Size(), "STANDARD"})
		}
		count++
		last = item
	}
	if doc.IsTruncated {
		if v2 {
			doc.NextContinuationToken = base64.RawURLEncoding.EncodeToString([]byte(last))
		} else {
			doc.NextMarker = e(last)
		}
	}
	if v2 {
		doc.KeyCount = &count
	}
	writeXML(w, doc)
	return nil
}

// ---------------------------------------------------------------------------------------
// multipart uploads

func (s *server) upload(id, bucket, key string) (*upload, error) {
	s.mu.Lock()
	u, ok := s.uploads[id]
	s.mu.Unlock()
	if !ok || u.bucket != bucket || u.key != key {
		return nil, errNoSuchUpload
	}
	return u, nil
}

func (s *server) createUpload(w http.ResponseWriter, bucket, key string) error {
	if _, err := s.keyPath(bucket, key); err != nil {
		return err
	}
	id := fmt.Sprintf("%x-%x", time.Now().UnixNano(), s.next())
	dir := filepath.Join(s.tmp, "uploads", id)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(dir, "data"))
	if err != nil {
		return err
	}
	u := &upload{id: id, bucket: bucket, key: key, initiated: time.Now().UTC(), dir: dir, data: f,
		slots: map[int]bool{}, parts: map[int]*part{}}
	s.mu.Lock()
	s.uploads[id] = u
	s.mu.Unlock()
	writeXML(w, struct {
		XMLName  xml.Name `xml:"http://s3.amazonaws.com/doc/2006-03-01/ InitiateMultipartUploadResult"`
		Bucket   string
		Key      string
		UploadId string
	}{Bucket: bucket, Key: key, UploadId: id})
	return nil
}

func (s *server) uploadPart(w http.ResponseWriter, r *http.Request, bucket, key string, q map[string][]string) error {
	num, err := strconv.Atoi(first(q["partNumber"]))
	if err != nil || num < 1 || num > 10000 {
		return fail(400, "InvalidArgument", "Part number must be an integer between 1 and 10000, inclusive")
	}
	u, err := s.upload(first(q["uploadId"]), bucket, key)
	if err != nil {
		return err
	}
	src, size, err := body(r)
	if err != nil {
		return err
	}
	u.mu.Lock()
	if u.done {
		u.mu.Unlock()
		return errNoSuchUpload
	}
	inSlot := false
	if size > 0 && !u.slots[num] {
		if u.stride == 0 {
			u.stride = size
		}
		if size <= u.stride {
			inSlot = true
			u.slots[num] = true
			u.writers.Add(1)
		}
	}
	u.mu.Unlock()
	p := &part{num: num, size: size, inSlot: inSlot}
	var n int64
	if inSlot {
		p.path, p.off = u.data.Name(), int64(num-1)*u.stride
		n, err = copyAt(u.data, p.off, src, size)
		if err == nil {
			u.wroteSlot(p.off, n)
		}
		u.writers.Done()
		if err != nil {
			u.mu.Lock()
			delete(u.slots, num) // its bytes are not a part: the slot is free again
			u.mu.Unlock()
			return err
		}
	} else {
		f, err := os.CreateTemp(u.dir, fmt.Sprintf("part%d-*", num))
		if err != nil {
			return err
		}
		p.path = f.Name()
		n, err = copyAt(f, 0, src, size)
		f.Close()
		if err != nil {
			os.Remove(p.path)
			return err
		}
	}
	p.size, p.etag, p.mod = n, s.newETag(n), time.Now().UTC()
	u.mu.Lock()
	if u.done { // aborted or completed meanwhile: this part is not part of anything
		u.mu.Unlock()
		return errNoSuchUpload
	}
	old := u.parts[num]
	u.parts[num] = p
	u.mu.Unlock()
	if old != nil && !old.inSlot {
		os.Remove(old.path)
	}
	w.Header().Set("ETag", `"`+p.etag+`"`)
	w.WriteHeader(200)
	return nil
}

func first(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

type completeReq struct {
	Parts []struct {
		PartNumber int
		ETag       string
	} `xml:"Part"`
}

type completeDoc struct {
	XMLName  xml.Name `xml:"http://s3.amazonaws.com/doc/2006-03-01/ CompleteMultipartUploadResult"`
	Location string
	Bucket   string
	Key      string
	ETag     string
}

func (s *server) completeUpload(w http.ResponseWriter, r *http.Request, bucket, key, id string) error {
	raw, err := io.ReadAll(io.LimitReader(r.Body, 4<<20))
	if err != nil {
		return fail(400, "IncompleteBody", err.Error())
	}
	var req completeReq
	if err := xml.Unmarshal(raw, &req); err != nil || len(req.Parts) == 0 {
		return fail(400, "MalformedXML", "The XML you provided was not well-formed or did not validate against our published schema")
	}
	answer := func(etag string) error {
		writeXML(w, completeDoc{Location: "/" + bucket + "/" + key, Bucket: bucket, Key: key, ETag: `"` + etag + `"`})
		return nil
	}
	s.mu.Lock()
	u, ok := s.uploads[id]
	prev, wasDone := s.done[id]
	s.mu.Unlock()
	if !ok || u.bucket != bucket || u.key != key {
		if wasDone && prev.bucket == bucket && prev.key == key {
			// completed before (its answer lost?): the same answer while the object is its
			p, _ := s.keyPath(bucket, key)
			if st, err := os.Stat(p); err == nil {
				if ino, _ := identity(st); ino == prev.ino {
					return answer(prev.etag)
				}
			}
		}
		return errNoSuchUpload
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.done {
		return errNoSuchUpload
	}
	// check the list against the parts
	chosen := make([]*part, 0, len(req.Parts))
	digests := make([]byte, 0, 16*len(req.Parts))
	for i, rp := range req.Parts {
		if i > 0 && rp.PartNumber <= req.Parts[i-1].PartNumber {
			return fail(400, "InvalidPartOrder", "The list of parts was not in ascending order.")
		}
		p := u.parts[rp.PartNumber]
		if p == nil || strings.Trim(strings.TrimSpace(rp.ETag), `"`) != p.etag {
			return fail(400, "InvalidPart", fmt.Sprintf("part %d was not uploaded or its ETag does not match", rp.PartNumber))
		}
		if i < len(req.Parts)-1 && p.size < minPartSize {
			return fail(400, "EntityTooSmall", "Your proposed upload is smaller than the minimum allowed object size.")
		}
		d, _ := hex.DecodeString(p.etag)
		digests = append(digests, d...)
		chosen = append(chosen, p)
	}
	sum := md5.Sum(digests)
	etag := fmt.Sprintf("%s-%d", hex.EncodeToString(sum[:]), len(chosen))
	u.done = true // no new part from here on
	u.mu.Unlock() // the writers and early syncs finishing take the lock
	u.writers.Wait()
	u.mu.Lock()
	if u.syncErr != nil { // the disk refused an early sync: the data is not known to be safe
		u.done = false
		return fail(500, "InternalError", "writing the parts to disk failed: "+u.syncErr.Error())
	}
	undo := func(err error) error { u.done = false; return err }
	// in place: parts 1..n, all in their slots, all but the last of the stride's size
	inPlace := len(u.slots) == len(chosen) // no slot beyond the parts: truncating cuts nothing
	for i, p := range chosen {
		if p.num != i+1 || !p.inSlot || (i < len(chosen)-1 && p.size != u.stride) {
			inPlace = false
			break
		}
	}
	var total int64
	for _, p := range chosen {
		total += p.size
	}
	target := u.data.Name()
	if inPlace {
		if err := u.data.Truncate(total); err != nil {
			return undo(err)
		}
		if err := u.data.Sync(); err != nil {
			return undo(err)
		}
	} else {
		out, err := os.Create(filepath.Join(u.dir, "assembled"))
		if err != nil {
			return undo(err)
		}
		target = out.Name()
		for _, p := range chosen {
			if err = appendRange(out, p.path, p.off, p.size); err != nil {
				break
			}
		}
		if err == nil {
			err = out.Sync()
		}
		out.Close()
		if err != nil {
			os.Remove(target)
			return undo(err)
		}
	}
	if err := s.commit(target, bucket, key, r, etag); err != nil {
		if target != u.data.Name() {
			os.Remove(target)
		}
		return undo(err) // the upload stays, as on S3 after a refused completion
	}
	u.data.Close()
	os.RemoveAll(u.dir)
	p, _ := s.keyPath(bucket, key)
	var ino uint64
	if st, err := os.Stat(p); err == nil {
		ino, _ = identity(st)
	}
	s.mu.Lock()
	delete(s.uploads, id)
	s.done[id] = completed{bucket, key, etag, ino}
	s.mu.Unlock()
	return answer(etag)
}

// appendRange appends size bytes of the file at path from off to out (copy_file_range(2)
// through os.File.ReadFrom where the kernel can, else a copy).
func appendRange(out *os.File, path string, off, size int64) error {
	src, err := os.Open(path)
	if err != nil {
		return err
	}
	defer src.Close()
	if _, err := src.Seek(off, io.SeekStart); err != nil {
		return err
	}
	n, err := out.ReadFrom(io.LimitReader(src, size))
	if err == nil && n != size {
		err = fmt.Errorf("part file short: %d of %d bytes", n, size)
	}
	return err
}

func (s *server) abortUpload(w http.ResponseWriter, bucket, key, id string) error {
	u, err := s.upload(id, bucket, key)
	if err != nil {
		return err
	}
	u.mu.Lock()
	if u.done {
		u.mu.Unlock()
		return errNoSuchUpload
	}
	u.done = true
	u.mu.Unlock()
	u.writers.Wait()
	s.mu.Lock()
	delete(s.uploads, id)
	s.mu.Unlock()
	u.data.Close()
	os.RemoveAll(u.dir)
	w.WriteHeader(204)
	return nil
}

type uploadsDoc struct {
	XMLName            xml.Name `xml:"http://s3.amazonaws.com/doc/2006-03-01/ ListMultipartUploadsResult"`
	Bucket             string
	KeyMarker          string
	UploadIdMarker     string
	NextKeyMarker      string `xml:",omitempty"`
	NextUploadIdMarker string `xml:",omitempty"`
	Prefix             string
	Delimiter          string `xml:",omitempty"`
	MaxUploads         int
	EncodingType       string `xml:",omitempty"`
	IsTruncated        bool
	Uploads            []uploadEntry `xml:"Upload"`
	CommonPrefixes     []prefixEntry
}

type uploadEntry struct {
	Key          string
	UploadId     string
	Initiator    struct{ ID, DisplayName string }
	Owner        struct{ ID, DisplayName string }
	StorageClass string
	Initiated    string
}

func (s *server) listUploads(w http.ResponseWriter, bucket string, q map[string][]string) error {
	get := func(k string) string { return first(q[k]) }
	prefix, delim := get("prefix"), get("delimiter")
	keyMarker, idMarker := get("key-marker"), get("upload-id-marker")
	enc := get("encoding-type") == "url"
	max, err := maxKeysOf(get("max-uploads"), 1000)
	if err != nil {
		return err
	}
	s.mu.Lock()
	var ups []*upload
	for _, u := range s.uploads {
		if u.bucket == bucket && strings.HasPrefix(u.key, prefix) {
			ups = append(ups, u)
		}
	}
	s.mu.Unlock()
	sort.Slice(ups, func(i, j int) bool {
		if ups[i].key != ups[j].key {
			return ups[i].key < ups[j].key
		}
		return ups[i].id < ups[j].id
	})
	e := func(v string) string {
		if enc {
			return urlEncode(v)
		}
		return v
	}
	doc := uploadsDoc{Bucket: bucket, KeyMarker: e(keyMarker), UploadIdMarker: idMarker, Prefix: e(prefix),
		Delimiter: e(delim), MaxUploads: max}
	if enc {
		doc.EncodingType = "url"
	}
	count, lastKey, lastID, lastPrefix := 0, "", "", ""
	for _, u := range ups {
		if keyMarker != "" {
			if u.key < keyMarker || (u.key == keyMarker && (idMarker == "" || u.id <= idMarker)) {
				continue
			}
		}
		if delim != "" {
			if i := strings.Index(u.key[len(prefix):], delim); i >= 0 {
				cp := u.key[:len(prefix)+i+len(delim)]
				if cp == lastPrefix || cp <= keyMarker {
					continue
				}
				if count == max {
					doc.IsTruncated = true
					break
				}
				doc.CommonPrefixes = append(doc.CommonPrefixes, prefixEntry{e(cp)})
				lastPrefix, lastKey, lastID = cp, cp, ""
				count++
				continue
			}
		}
		if count == max {
			doc.IsTruncated = true
			break
		}
		ent := uploadEntry{Key: e(u.key), UploadId: u.id, StorageClass: "STANDARD",
			Initiated: u.initiated.Format(isoTime)}
		ent.Initiator.ID, ent.Owner.ID = "bench", "bench"
		doc.Uploads = append(doc.Uploads, ent)
		lastKey, lastID = u.key, u.id
		count++
	}
	if doc.IsTruncated {
		doc.NextKeyMarker, doc.NextUploadIdMarker = e(lastKey), lastID
	}
	writeXML(w, doc)
	return nil
}

type partsDoc struct {
	XMLName              xml.Name `xml:"http://s3.amazonaws.com/doc/2006-03-01/ ListPartsResult"`
	Bucket               string
	Key                  string
	UploadId             string
	PartNumberMarker     int
	NextPartNumberMarker int `xml:",omitempty"`
	MaxParts             int
	IsTruncated          bool
	StorageClass         string
	Parts                []partEntry `xml:"Part"`
}

type partEntry struct {
	PartNumber   int
	LastModified string
	ETag         string
	Size         int64
}

func (s *server) listParts(w http.ResponseWriter, bucket, key string, q map[string][]string) error {
	u, err := s.upload(first(q["uploadId"]), bucket, key)
	if err != nil {
		return err
	}
	marker := 0
	if v := first(q["part-number-marker"]); v != "" {
		if marker, err = strconv.Atoi(v); err != nil {
			return fail(400, "InvalidArgument", "bad part-number-marker")
		}
	}
	max, err := maxKeysOf(first(q["max-parts"]), 1000)
	if err != nil {
		return err
	}
	u.mu.Lock()
	nums := make([]int, 0, len(u.parts))
	for n := range u.parts {
		if n > marker {
			nums = append(nums, n)
		}
	}
	sort.Ints(nums)
	doc := partsDoc{Bucket: bucket, Key: key, UploadId: u.id, PartNumberMarker: marker, MaxParts: max,
		StorageClass: "STANDARD"}
	for _, n := range nums {
		if len(doc.Parts) == max {
			doc.IsTruncated = true
			doc.NextPartNumberMarker = doc.Parts[len(doc.Parts)-1].PartNumber
			break
		}
		p := u.parts[n]
		doc.Parts = append(doc.Parts, partEntry{n, p.mod.Format(isoTime), `"` + p.etag + `"`, p.size})
	}
	u.mu.Unlock()
	writeXML(w, doc)
	return nil
}

// ---------------------------------------------------------------------------------------
// the request log (-log): one line per request, for checking what clients send

type logWriter struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (l *logWriter) WriteHeader(code int) {
	if l.status == 0 {
		l.status = code
	}
	l.ResponseWriter.WriteHeader(code)
}

func (l *logWriter) Write(p []byte) (int, error) {
	if l.status == 0 {
		l.status = 200
	}
	n, err := l.ResponseWriter.Write(p)
	l.bytes += int64(n)
	return n, err
}

// ReadFrom keeps the sendfile(2) path of the real writer.
func (l *logWriter) ReadFrom(r io.Reader) (int64, error) {
	if l.status == 0 {
		l.status = 200
	}
	n, err := l.ResponseWriter.(io.ReaderFrom).ReadFrom(r)
	l.bytes += n
	return n, err
}

func withLog(h http.Handler, lg *log.Logger) http.Handler {
	hdrs := []string{"Range", "If-Match", "If-None-Match", "Content-Length", "Content-Encoding",
		"X-Amz-Content-Sha256", "X-Amz-Decoded-Content-Length", "Expect", "Transfer-Encoding",
		"Content-Md5", "X-Amz-Checksum-Crc32", "X-Amz-Sdk-Checksum-Algorithm", "X-Amz-Trailer"}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t0 := time.Now()
		lw := &logWriter{ResponseWriter: w}
		h.ServeHTTP(lw, r)
		var b strings.Builder
		for _, k := range hdrs {
			if v := r.Header.Get(k); v != "" {
				if k == "X-Amz-Content-Sha256" && len(v) > 20 && !strings.HasPrefix(v, "STREAMING") && v != "UNSIGNED-PAYLOAD" {
					v = v[:12] + "..."
				}
				fmt.Fprintf(&b, " %s=%q", strings.ToLower(k), v)
			}
		}
		lg.Printf("%s %s %d %dB %.1fms%s", r.Method, r.URL.RequestURI(), lw.status, lw.bytes,
			float64(time.Since(t0).Microseconds())/1000, b.String())
	})
}

// ---------------------------------------------------------------------------------------

func main() {
	dir := flag.String("dir", "", "the data directory (buckets are its subdirectories)")
	addr := flag.String("addr", "127.0.0.1:9000", "listen address")
	logPath := flag.String("log", "", "log every request to this file (- for stderr)")
	cert := flag.String("cert", "", "TLS certificate (PEM): serve https")
	key := flag.String("key", "", "TLS key (PEM)")
	flag.Parse()
	if *dir == "" {
		fmt.Fprintln(os.Stderr, "s3server: -dir is required")
		os.Exit(2)
	}
	root, err := filepath.Abs(*dir)
	if err != nil {
		log.Fatal(err)
	}
	tmp := filepath.Join(root, internalDir)
	os.RemoveAll(filepath.Join(tmp, "uploads")) // uploads live in memory: a restart forgets them
	if err := os.MkdirAll(filepath.Join(tmp, "uploads"), 0o755); err != nil {
		log.Fatalf("s3server: %v", err)
	}
	s := &server{root: root, tmp: tmp, seq: uint64(time.Now().UnixNano()), uploads: map[string]*upload{},
		done: map[string]completed{}, etags: map[string]objMeta{}}
	var h http.Handler = s
	if *logPath != "" {
		out := os.Stderr
		if *logPath != "-" {
			out, err = os.OpenFile(*logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
			if err != nil {
				log.Fatalf("s3server: %v", err)
			}
		}
		h = withLog(s, log.New(out, "", log.Ltime|log.Lmicroseconds))
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatalf("s3server: %v", err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 30 * time.Second, IdleTimeout: 120 * time.Second,
		// HTTP/1.1 only, as the other servers of the benchmark
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
		ErrorLog:     log.New(io.Discard, "", 0)}
	if *cert != "" {
		err = srv.ServeTLS(ln, *cert, *key)
	} else {
		err = srv.Serve(ln)
	}
	log.Fatalf("s3server: %v", err)
}
