// SPDX-License-Identifier: MIT
// The C ABI of the dragond client (dragon_client_*), over dragon::Client.
#include <dragon/client.hpp>

#include "capi/internal.hpp"

#include <cstdio>
#include <vector>

struct dragon_client {
  dragon::Client client;
  dragon_output_fn output = nullptr;
  void* outputContext = nullptr;
};

struct dragon_transfer {
  dragon::MemoryTransfer transfer;
};

namespace {

using namespace dragon::capi;

std::string_view nameOf(const char* name) { return name == nullptr ? std::string_view() : name; }

dragon_status_t wrapPool(dragon::Result<std::shared_ptr<dragon::Pool>> p, dragon_pool_t** out) {
  if (!p.has_value()) return fail(p.error());
  *out = new dragon_pool{std::move(*p)};
  return DRAGON_OK;
}

dragon_status_t wrapChannel(dragon::Result<std::unique_ptr<dragon::ClientChannel>> c,
                            dragon_channel_t** out) {
  if (!c.has_value()) return fail(c.error());
  if ((*c)->isRemote()) {
    *out = new dragon_channel{nullptr, std::nullopt, std::move(*c)};
  } else {
    *out = new dragon_channel{(*c)->sharedPool(), std::move((*c)->channel()), nullptr};
  }
  return DRAGON_OK;
}

dragon_status_t statusOf(const dragon::Status& st) { return st.isOk() ? DRAGON_OK : fail(st); }

dragon::Result<dragon::MemoryRange> rangeOf(const dragon_memory_range_t* r) {
  if (r == nullptr) return dragon::Status(dragon::StatusCode::InvalidArgument, "a range is NULL");
  auto d = toDesc(&r->pool);
  if (!d.has_value()) return d.error();
  return dragon::MemoryRange{*d, r->allocation, r->offset};
}

dragon_status_t startTransfer(dragon_client_t* client, bool put, const dragon_memory_range_t* from,
                              const dragon_memory_range_t* to, uint64_t length,
                              dragon_transfer_t** out) {
  if (client == nullptr || out == nullptr) return invalid("client or out_transfer is NULL");
  auto f = rangeOf(from);
  if (!f.has_value()) return fail(f.error());
  auto t = rangeOf(to);
  if (!t.has_value()) return fail(t.error());
  auto r = put ? client->client.put(*f, *t, length) : client->client.get(*f, *t, length);
  if (!r.has_value()) return fail(r.error());
  *out = new dragon_transfer{std::move(*r)};
  return DRAGON_OK;
}

dragon::Stdio stdioOf(int mode) {
  switch (mode) {
    case DRAGON_STDIO_INHERIT: return dragon::Stdio::Inherit;
    case DRAGON_STDIO_CAPTURE: return dragon::Stdio::Capture;
    case DRAGON_STDIO_FILE: return dragon::Stdio::File;
    case DRAGON_STDIO_PASSED: return dragon::Stdio::Passed;
    default: return dragon::Stdio::Null;
  }
}

bool validStdio(int mode) { return mode >= DRAGON_STDIO_INHERIT && mode <= DRAGON_STDIO_PASSED; }

}  // namespace

extern "C" {

dragon_status_t dragon_client_connect(const char* socket_path, dragon_client_t** out_client) {
  return guarded([&] {
    if (out_client == nullptr) return invalid("out_client is NULL");
    dragon::Client::Options o;
    o.socketPath = socket_path == nullptr ? "" : socket_path;
    o.name = "C client";
    auto c = dragon::Client::connect(o);
    if (!c.has_value()) return fail(c.error());
    *out_client = new dragon_client{std::move(*c)};
    return DRAGON_OK;
  });
}

void dragon_client_close(dragon_client_t* client) { delete client; }

dragon_status_t dragon_client_pool_create(dragon_client_t* client, uint64_t size, const char* name,
                                          dragon_pool_t** out_pool) {
  return guarded([&] {
    if (client == nullptr || out_pool == nullptr) return invalid("client or out_pool is NULL");
    return wrapPool(client->client.createPool(size, nameOf(name)), out_pool);
  });
}

dragon_status_t dragon_client_pool_attach(dragon_client_t* client, const dragon_descriptor_t* desc,
                                          const char* name, dragon_pool_t** out_pool) {
  return guarded([&] {
    if (client == nullptr || out_pool == nullptr) return invalid("client or out_pool is NULL");
    if ((desc == nullptr) == (name == nullptr)) return invalid("give a descriptor or a name");
    if (desc == nullptr) return wrapPool(client->client.attachPool(nameOf(name)), out_pool);
    auto d = toDesc(desc);
    if (!d.has_value()) return fail(d.error());
    return wrapPool(client->client.attachPool(*d), out_pool);
  });
}

dragon_status_t dragon_client_channel_create(dragon_client_t* client, dragon_pool_t* pool,
                                             uint32_t capacity, uint32_t inline_size,
                                             const char* name, dragon_channel_t** out_channel) {
  return guarded([&] {
    if (client == nullptr || pool == nullptr || out_channel == nullptr) {
      return invalid("client, pool or out_channel is NULL");
    }
    dragon::ChannelOptions o;
    o.capacity = capacity;
    o.inlineSize = inline_size;
    return wrapChannel(client->client.createChannel(pool->pool->descriptor(), o, nameOf(name)),
                       out_channel);
  });
}

dragon_status_t dragon_client_channel_attach(dragon_client_t* client,
                                             const dragon_descriptor_t* desc, const char* name,
                                             dragon_channel_t** out_channel) {
  return guarded([&] {
    if (client == nullptr || out_channel == nullptr) return invalid("client or out_channel is NULL");
    if ((desc == nullptr) == (name == nullptr)) return invalid("give a descriptor or a name");
    if (desc == nullptr) {
      return wrapChannel(client->client.attachChannel(nameOf(name)), out_channel);
    }
    auto d = toDesc(desc);
    if (!d.has_value()) return fail(d.error());
    return wrapChannel(client->client.attachChannel(*d), out_channel);
  });
}

dragon_status_t dragon_client_detach(dragon_client_t* client, const dragon_descriptor_t* desc) {
  return guarded([&] {
    if (client == nullptr || desc == nullptr) return invalid("client or desc is NULL");
    auto d = toDesc(desc);
    return d.has_value() ? statusOf(client->client.detach(*d)) : fail(d.error());
  });
}

dragon_status_t dragon_client_destroy(dragon_client_t* client, const dragon_descriptor_t* desc) {
  return guarded([&] {
    if (client == nullptr || desc == nullptr) return invalid("client or desc is NULL");
    auto d = toDesc(desc);
    return d.has_value() ? statusOf(client->client.destroy(*d)) : fail(d.error());
  });
}

dragon_status_t dragon_client_register_name(dragon_client_t* client, const char* name,
                                            const dragon_descriptor_t* desc) {
  return guarded([&] {
    if (client == nullptr || name == nullptr || desc == nullptr) {
      return invalid("client, name or desc is NULL");
    }
    auto d = toDesc(desc);
    return d.has_value() ? statusOf(client->client.registerName(name, *d)) : fail(d.error());
  });
}

dragon_status_t dragon_client_lookup_name(dragon_client_t* client, const char* name,
                                          dragon_descriptor_t* out_desc) {
  return guarded([&] {
    if (client == nullptr || name == nullptr || out_desc == nullptr) {
      return invalid("client, name or out_desc is NULL");
    }
    auto d = client->client.lookupName(name);
    if (!d.has_value()) return fail(d.error());
    fromDesc(*d, out_desc);
    return DRAGON_OK;
  });
}

void dragon_spawn_options_init(dragon_spawn_options_t* options) {
  if (options == nullptr) return;
  *options = dragon_spawn_options_t{};
  options->stdin_mode = DRAGON_STDIO_NULL;
  options->stdout_mode = DRAGON_STDIO_CAPTURE;
  options->stderr_mode = DRAGON_STDIO_CAPTURE;
  options->stdin_fd = 0;
  options->stdout_fd = 1;
  options->stderr_fd = 2;
  options->count = 1;
}

namespace {

dragon_status_t spawnPlaced(dragon_client_t* client, const dragon_spawn_options_t* options,
                            dragon::Placement placement, dragon_process_t* out_processes,
                            size_t capacity, size_t* out_count) {
  return guarded([&] {
    if (client == nullptr || options == nullptr || options->argv == nullptr ||
        options->argv[0] == nullptr) {
      return invalid("client, options or argv is NULL or empty");
    }
    if (!validStdio(options->stdin_mode) || !validStdio(options->stdout_mode) ||
        !validStdio(options->stderr_mode)) {
      return invalid("unknown stdio mode");
    }
    if (capacity > 0 && out_processes == nullptr) return invalid("out_processes is NULL");
    dragon::SpawnOptions o;
    for (auto* a = options->argv; *a != nullptr; ++a) o.argv.emplace_back(*a);
    if (options->env != nullptr) {
      for (auto* e = options->env; *e != nullptr; ++e) o.env.emplace_back(*e);
      o.inheritEnv = false;  // {NULL} is an empty environment; only NULL means this process's
    }
    o.cwd = options->cwd == nullptr ? "" : options->cwd;
    o.stdinMode = stdioOf(options->stdin_mode);
    o.stdoutMode = stdioOf(options->stdout_mode);
    o.stderrMode = stdioOf(options->stderr_mode);
    o.stdinFile = options->stdin_file == nullptr ? "" : options->stdin_file;
    o.stdoutFile = options->stdout_file == nullptr ? "" : options->stdout_file;
    o.stderrFile = options->stderr_file == nullptr ? "" : options->stderr_file;
    o.stdinFd = options->stdin_fd;
    o.stdoutFd = options->stdout_fd;
    o.stderrFd = options->stderr_fd;
    o.label = options->label == nullptr ? "" : options->label;
    o.group = options->group;
    o.count = options->count == 0 ? 1 : options->count;
    o.placement = placement;
    auto r = client->client.spawn(o);
    if (!r.has_value()) return fail(r.error());
    for (std::size_t i = 0; i < r->size() && i < capacity; ++i) {
      out_processes[i] = dragon_process_t{(*r)[i].puid, (*r)[i].pid, (*r)[i].group};
    }
    if (out_count != nullptr) *out_count = r->size();
    return DRAGON_OK;
  });
}

}  // namespace

dragon_status_t dragon_client_spawn(dragon_client_t* client, const dragon_spawn_options_t* options,
                                    dragon_process_t* out_processes, size_t capacity,
                                    size_t* out_count) {
  return spawnPlaced(client, options, dragon::Placement::thisNode(), out_processes, capacity,
                     out_count);
}

dragon_status_t dragon_client_spawn_on(dragon_client_t* client,
                                       const dragon_spawn_options_t* options, uint32_t node,
                                       dragon_process_t* out_processes, size_t capacity,
                                       size_t* out_count) {
  const dragon::Placement where = node == DRAGON_NODE_ROUND_ROBIN
                                      ? dragon::Placement::roundRobin()
                                      : dragon::Placement::onNode(node);
  return spawnPlaced(client, options, where, out_processes, capacity, out_count);
}

dragon_status_t dragon_client_put(dragon_client_t* client, const dragon_memory_range_t* from,
                                  const dragon_memory_range_t* to, uint64_t length,
                                  dragon_transfer_t** out_transfer) {
  return guarded([&] { return startTransfer(client, true, from, to, length, out_transfer); });
}

dragon_status_t dragon_client_get(dragon_client_t* client, const dragon_memory_range_t* from,
                                  const dragon_memory_range_t* to, uint64_t length,
                                  dragon_transfer_t** out_transfer) {
  return guarded([&] { return startTransfer(client, false, from, to, length, out_transfer); });
}

dragon_status_t dragon_transfer_wait(dragon_transfer_t* transfer, int64_t timeout_ns) {
  return guarded([&] {
    if (transfer == nullptr) return invalid("transfer is NULL");
    return statusOf(transfer->transfer.wait(toTimeout(timeout_ns)));
  });
}

void dragon_transfer_free(dragon_transfer_t* transfer) { delete transfer; }

dragon_status_t dragon_client_wait_any(dragon_client_t* client, dragon_wait_item_t* items,
                                       size_t count, int64_t timeout_ns, size_t* out_ready) {
  return guarded([&] {
    if (client == nullptr || (items == nullptr && count > 0) || out_ready == nullptr) {
      return invalid("client, items or out_ready is NULL");
    }
    if (count >= dragon::Channel::kMaxWaitItems) return invalid("too many wait items");
    std::vector<dragon::ClientWaitItem> w(count);
    for (size_t i = 0; i < count; ++i) {
      if (items[i].channel == nullptr) return invalid("a wait item without a channel");
      if (items[i].channel->remote) {
        w[i].channel = items[i].channel->remote.get();
      } else {
        w[i].mapped = &*items[i].channel->channel;
      }
      w[i].events = static_cast<dragon::WaitFor>(items[i].events);
    }
    auto n = client->client.waitAny(w, toTimeout(timeout_ns));
    if (!n.has_value()) return fail(n.error());
    for (size_t i = 0; i < count; ++i) items[i].ready = static_cast<uint32_t>(w[i].ready);
    *out_ready = *n;
    return DRAGON_OK;
  });
}

dragon_status_t dragon_client_nodes(dragon_client_t* client, dragon_node_t* out_nodes,
                                    size_t capacity, size_t* out_count) {
  return guarded([&] {
    if (client == nullptr || (capacity > 0 && out_nodes == nullptr)) {
      return invalid("client or out_nodes is NULL");
    }
    auto r = client->client.nodes();
    if (!r.has_value()) return fail(r.error());
    for (std::size_t i = 0; i < r->size() && i < capacity; ++i) {
      const auto& n = (*r)[i];
      dragon_node_t out{};
      out.node = n.node;
      out.cpus = n.cpus;
      std::snprintf(out.hostname, sizeof out.hostname, "%s", n.hostname.c_str());
      out_nodes[i] = out;
    }
    if (out_count != nullptr) *out_count = r->size();
    return DRAGON_OK;
  });
}

dragon_status_t dragon_client_wait(dragon_client_t* client, const uint64_t* puids, size_t count,
                                   int64_t timeout_ns, dragon_exit_t* out_exits) {
  return guarded([&] {
    if (client == nullptr || (count > 0 && (puids == nullptr || out_exits == nullptr))) {
      return invalid("client, puids or out_exits is NULL");
    }
    auto r = client->client.wait(std::vector<std::uint64_t>(puids, puids + count),
                                 toTimeout(timeout_ns));
    if (!r.has_value()) return fail(r.error());
    for (std::size_t i = 0; i < r->size() && i < count; ++i) {
      out_exits[i] = dragon_exit_t{(*r)[i].puid, (*r)[i].exitCode, (*r)[i].signal};
    }
    return DRAGON_OK;
  });
}

dragon_status_t dragon_client_signal(dragon_client_t* client, const uint64_t* puids, size_t count,
                                     int signal) {
  return guarded([&] {
    if (client == nullptr || (count > 0 && puids == nullptr)) return invalid("client or puids is NULL");
    return statusOf(client->client.signal(std::vector<std::uint64_t>(puids, puids + count), signal));
  });
}

dragon_status_t dragon_client_signal_group(dragon_client_t* client, uint64_t group, int signal) {
  return guarded([&] {
    if (client == nullptr) return invalid("client is NULL");
    return statusOf(client->client.signalGroup(group, signal));
  });
}

dragon_status_t dragon_client_list_processes(dragon_client_t* client,
                                             dragon_process_entry_t* out_entries, size_t capacity,
                                             size_t* out_count) {
  return guarded([&] {
    if (client == nullptr || (capacity > 0 && out_entries == nullptr)) {
      return invalid("client or out_entries is NULL");
    }
    auto r = client->client.listProcesses();
    if (!r.has_value()) return fail(r.error());
    for (std::size_t i = 0; i < r->size() && i < capacity; ++i) {
      const auto& p = (*r)[i];
      out_entries[i] = dragon_process_entry_t{p.puid,   p.pid,         p.running ? 1 : 0,
                                              p.exit.exitCode, p.exit.signal, p.group,
                                              p.job};
    }
    if (out_count != nullptr) *out_count = r->size();
    return DRAGON_OK;
  });
}

dragon_status_t dragon_client_end_job(dragon_client_t* client, int now) {
  return guarded([&] {
    if (client == nullptr) return invalid("client is NULL");
    return statusOf(client->client.endJob(now != 0));
  });
}

dragon_status_t dragon_client_set_output_handler(dragon_client_t* client, dragon_output_fn fn,
                                                 void* context) {
  return guarded([&] {
    if (client == nullptr) return invalid("client is NULL");
    client->output = fn;
    client->outputContext = context;
    if (fn == nullptr) {
      client->client.setOutputHandler(nullptr);
    } else {
      client->client.setOutputHandler([client](const dragon::OutputLine& l) {
        client->output(client->outputContext, l.puid, l.isStderr ? 1 : 0, l.line.data(),
                       l.line.size());
      });
    }
    return DRAGON_OK;
  });
}

dragon_status_t dragon_client_pump(dragon_client_t* client, int64_t timeout_ns) {
  return guarded([&] {
    if (client == nullptr) return invalid("client is NULL");
    return statusOf(client->client.pump(toTimeout(timeout_ns)));
  });
}

}  // extern "C"
