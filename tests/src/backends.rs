//! Real HTTP backends for L7 tests: NGINX on each server address, port 8080.

use std::path::Path;

use anyhow::Result;

use crate::lab::{Lab, Netns, Proc};
use crate::traffic::TIMEOUT;

/// NGINX on every address of `servers`, port 8080: `/` answers which server it is (`s1`, `s2`...) and the
/// forwarding headers it got, `/whoami` the client-certificate headers, `/sess` sets a JSESSIONID cookie, `/upload` reads a body and answers its length,
/// and `/big.bin` is a file of `big_mib` MiB of a fixed pattern (in `<lab>/nginx/www`).
pub fn nginx(lab: &Lab, ns: &Netns, servers: &[&str], big_mib: u32) -> Result<Proc> {
    nginx_with_tls(lab, ns, servers, big_mib, Some(8080), None)
}

/// [`nginx`] with plain HTTP on `http_port` (or none), and HTTPS on port 8443 of every address with the
/// certificate and key `tls` (PEM files); any path ending in `/scheme` answers
/// `<scheme> <TLS version> <SNI> <requests on this connection> <server>`.
pub fn nginx_with_tls(
    lab: &Lab,
    ns: &Netns,
    servers: &[&str],
    big_mib: u32,
    http_port: Option<u16>,
    tls: Option<(&Path, &Path)>,
) -> Result<Proc> {
    let dir = lab.dir().join("nginx");
    let www = dir.join("www");
    std::fs::create_dir_all(&www)?;
    let big: Vec<u8> = (0..big_mib * 1024 * 1024)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(www.join("big.bin"), &big)?;
    let d = dir.display();
    let servers: String = servers
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            let tls_listen = match tls {
                Some((cert, key)) => format!(
                    "listen {ip}:8443 ssl; ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:tls:1m; ssl_certificate {}; ssl_certificate_key {};",
                    cert.display(),
                    key.display()
                ),
                None => String::new(),
            };
            let http_listen = http_port.map_or(String::new(), |port| format!("listen {ip}:{port};"));
            format!(
                "server {{ {http_listen} {tls_listen} root {www};
                   location ~ /scheme$ {{ return 200 \"$scheme $ssl_protocol $ssl_server_name $connection_requests s{n}\\n\"; }}
                   location = / {{ return 200 \"s{n} xff=$http_x_forwarded_for proto=$http_x_forwarded_proto\\n\"; }}
                   location = /whoami {{ return 200 \"verify=$http_x_client_verify subject=$http_x_client_cert_subject\n\"; }}
                   location = /sess {{ add_header Set-Cookie \"JSESSIONID=abc{n}\"; return 200 \"s{n} cookie=$cookie_JSESSIONID\\n\"; }}
                   location /upload {{ client_max_body_size 200m; return 200 \"got $content_length\\n\"; }} }}\n",
                n = i + 1,
                www = www.display()
            )
        })
        .collect();
    let conf = format!(
        "worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log warn;
         events {{ worker_connections 1024; }}
         http {{ access_log off; keepalive_timeout 75s; keepalive_requests 100000;
           client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fastcgi;
           uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
           {servers} }}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf)?;
    let proc = lab.spawn(ns, "nginx", &["-c", &path.display().to_string(), "-g", "daemon off;"])?;
    if let Some(port) = http_port {
        ns.wait_tcp_listen(port, TIMEOUT)?;
    }
    if tls.is_some() {
        ns.wait_tcp_listen(8443, TIMEOUT)?;
    }
    Ok(proc)
}
