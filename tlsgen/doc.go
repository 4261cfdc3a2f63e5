// Package tlsgen is sitebridge's certificate authority and TLS layer: it
// creates the CA, instance certificates and gossip key a deployment needs,
// defines the instance [Identity] carried in each certificate's URI SAN, and
// builds mutual TLS 1.3 configurations whose key material is reloaded from
// disk when the files change.
//
// # Files
//
// [Generate] writes, into one directory:
//
//	ca.crt, ca.key       ECDSA P-256 root "sitebridge CA", valid 10 years
//	<name>.crt, .key     one leaf per instance (serverAuth and clientAuth)
//	gossip.key           32 random bytes, base64, the memberlist keyring key
//
// Private keys are written with mode 0600 and every file is replaced
// atomically (temporary file and rename), so a running instance never reads a
// half-written file. Keys and certificates are made with go.step.sm/crypto;
// nothing shells out to openssl.
//
// # Identity
//
// Every leaf carries exactly one URI SAN:
//
//	spiffe://<trust-domain>/site/<site>/instance/<instance>
//	spiffe://<trust-domain>/tenant/<tenant>/site/<site>/instance/<instance>
//
// Peers are authorized by that identity, never by the common name.
//
// # Reloading and verification
//
// A [Reloader] holds the CA pool and the instance key pair. It looks at the
// files at most once per second, lazily from the TLS callbacks, and swaps in
// new material only when it loads and validates completely; otherwise the
// previous material stays in use. Existing connections are never touched.
//
// [Reloader.ServerConfig] and [Reloader.ClientConfig] verify the peer
// themselves (in VerifyConnection) so that the current CA pool is always the
// one used. Rejections are returned as [*VerifyError] carrying a
// [RejectReason], for callers to log with errors.As.
//
// # Smallstep CA
//
// Instead of [Generate], certificates can come from a smallstep CA
// (step-ca), through its HTTPS API ([CAClient]). [Enroll] gets the first
// one with a one-time token (as `step ca token` mints them, its SANs
// holding the identity URI): a new ECDSA P-256 key and a certificate
// request with exactly the token's SANs, signed at /1.0/sign. A [Renewer]
// then renews a Reloader's certificate at /1.0/renew, authenticated by the
// current key pair over mutual TLS, when a third of its lifetime is left,
// writes the new chain atomically over the certificate file and reloads it.
package tlsgen
