#!/usr/bin/env bash
# The test bed's PKI, made with openssl: a CA, the API server's serving certificate, an admin
# client certificate (group system:masters), kwok's serving certificate and the service-account
# signing key. Sourced by e2e/cluster. EC P-256 keys: quick to make, and accepted by Go and rustls.

# issue DIR NAME SUBJECT EXTENSIONS: a key and a certificate signed by DIR/ca.
issue() {
  local dir=$1 name=$2 subject=$3 ext=$4
  openssl ecparam -name prime256v1 -genkey -noout -out "$dir/$name.key" 2>/dev/null
  openssl req -new -key "$dir/$name.key" -subj "$subject" -out "$dir/$name.csr" 2>/dev/null
  printf '%s\n' "$ext" >"$dir/$name.ext"
  openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
    -days 3650 -sha256 -extfile "$dir/$name.ext" -out "$dir/$name.crt" 2>/dev/null
  rm -f "$dir/$name.csr" "$dir/$name.ext"
}

# make_pki DIR SERVICE_IP
make_pki() {
  local dir=$1 service_ip=$2
  mkdir -p "$dir"
  openssl ecparam -name prime256v1 -genkey -noout -out "$dir/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$dir/ca.key" -subj "/CN=weft-e2e-ca" -days 3650 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$dir/ca.crt" 2>/dev/null
  local server_ext="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth"
  issue "$dir" apiserver "/CN=kube-apiserver" "$server_ext
subjectAltName=DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:$service_ip"
  issue "$dir" kwok "/CN=kwok" "$server_ext
subjectAltName=DNS:localhost,IP:127.0.0.1"
  issue "$dir" admin "/O=system:masters/CN=weft-e2e-admin" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
  openssl ecparam -name prime256v1 -genkey -noout -out "$dir/sa.key" 2>/dev/null
  openssl ec -in "$dir/sa.key" -pubout -out "$dir/sa.pub" 2>/dev/null
  chmod 600 "$dir"/*.key
}

# make_kubeconfig DIR NAME SERVER: an admin kubeconfig with the certificates embedded.
make_kubeconfig() {
  local dir=$1 name=$2 server=$3
  cat <<EOF
apiVersion: v1
kind: Config
clusters:
- name: $name
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 "$dir/ca.crt")
users:
- name: $name-admin
  user:
    client-certificate-data: $(base64 -w0 "$dir/admin.crt")
    client-key-data: $(base64 -w0 "$dir/admin.key")
contexts:
- name: $name
  context:
    cluster: $name
    user: $name-admin
current-context: $name
EOF
}
