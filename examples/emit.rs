//! Emits to Socket.IO clients from a Rust program, through the adapters' RabbitMQ exchange.
//!
//! cargo run --release --no-default-features --example emit -- \
//!     <amqp-url> <exchange> <namespace> <command> [args...] [+ <command> [args...]]...
//!
//! Commands separated by a lone `+` are sent in order over one connection. Commands:
//!   emit <event> [room] <json-arg>...   io.to(room).emit(event, ...args); room "-" for everyone
//!   emit-binary <event> <text>          emits the text's bytes as a binary argument
//!   join <room> <new-room>              io.in(room).socketsJoin(new-room)
//!   leave <room> <old-room>             io.in(room).socketsLeave(old-room)
//!   disconnect <room>                   io.in(room).disconnectSockets(true)
//!   server-side-emit <event> <json-arg>...

use socket_io_amqp0_native::{Arg, BrokerConfig, Emitter, EmitterEvent};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        eprintln!("usage: emit <amqp-url> <exchange> <namespace> <command> [args...]");
        return ExitCode::from(2);
    }
    let (url, exchange, nsp, command, rest) = (&args[0], &args[1], &args[2], &args[3], &args[4..]);
    let mut config = BrokerConfig::new(url);
    config.exchange = exchange.clone();
    let emitter = Emitter::start(config, |event| {
        if let EmitterEvent::Error(message) = event {
            eprintln!("emitter: {message}");
        }
    });
    if let Err(error) = emitter.ready().await {
        eprintln!("could not connect: {error}");
        emitter.close().await;
        return ExitCode::FAILURE;
    }
    for command in rest_commands(command, rest) {
        if let Err(message) = send(&emitter, nsp, &command) {
            eprintln!("{message}");
            emitter.close().await;
            return ExitCode::from(2);
        }
    }
    emitter.close().await;
    ExitCode::SUCCESS
}

/// The first command and its arguments, then each command after a lone `+`.
fn rest_commands(first: &str, rest: &[String]) -> Vec<Vec<String>> {
    let mut commands = vec![vec![first.to_string()]];
    for arg in rest {
        if arg == "+" {
            commands.push(Vec::new());
        } else {
            commands
                .last_mut()
                .expect("one command at least")
                .push(arg.clone());
        }
    }
    commands
}

fn send(emitter: &Emitter, nsp: &str, command: &[String]) -> Result<(), String> {
    let target = |room: &str| {
        let all = emitter.of(nsp);
        if room == "-" {
            all
        } else {
            all.to(room)
        }
    };
    let json_args = |values: &[String]| {
        values
            .iter()
            .map(|v| Arg::json(v.as_str()))
            .collect::<Vec<_>>()
    };
    match command {
        [name, event, room, values @ ..] if name == "emit" => {
            target(room).emit(event, &json_args(values))
        }
        [name, event, text] if name == "emit-binary" => {
            emitter.of(nsp).emit(event, &[Arg::binary(text.as_bytes())])
        }
        [name, room, new_room] if name == "join" => target(room).sockets_join(&[new_room]),
        [name, room, old_room] if name == "leave" => target(room).sockets_leave(&[old_room]),
        [name, room] if name == "disconnect" => target(room).disconnect_sockets(true),
        [name, event, values @ ..] if name == "server-side-emit" => {
            emitter.of(nsp).server_side_emit(event, &json_args(values))
        }
        _ => return Err(format!("unknown command or wrong arguments: {command:?}")),
    }
    Ok(())
}
