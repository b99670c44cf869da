package cosign_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
)

// signECDSA is cosign's classic signature of payload: ECDSA over its
// SHA-256, base64.
func signECDSA(k *ecdsa.PrivateKey, payload []byte) (string, error) {
	h := sha256.Sum256(payload)
	sig, err := k.Sign(rand.Reader, h[:], crypto.SHA256)
	return base64.StdEncoding.EncodeToString(sig), err
}
