// Taking over from a previous daemon: its journal says which leases exist; the sockets come
// back from what it passed on (the fd store, an upgrade in place) or, after a crash, from the
// live holders themselves (pidfd_getfd), always recognised by SO_COOKIE. Part of LeaseService.
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <unordered_set>

#include "broker/os/peer.h"
#include "broker/service/lease_service.h"

namespace portbroker::broker {

namespace {

// The holders of the journal's leases, each pinned once.
struct LiveHolder {
  UniqueFd pidfd;
  bool alive = false;
  bool asked = false;  // its sockets were looked for
  std::unordered_set<uint64_t> cookies;
};

std::string lease_line(const journal::JournalLease& l, const journal::JournalBinding& b) {
  return "lease " + std::to_string(l.id) + " (" +
         format_endpoint(b.endpoint.protocol, b.endpoint.address, b.endpoint.port) + ", pid " +
         std::to_string(l.holder.pid) + " " + l.holder.comm + ")";
}

// After a crash: the broker's copies, back from the holders that have them.
void take_back_copies(std::map<std::pair<pid_t, uint64_t>, LiveHolder>& holders,
                      Inheritance& inherited, RestoreReport& report) {
  for (auto& [key, h] : holders) {
    if (!h.alive || h.cookies.empty()) continue;
    auto taken = take_sockets_from(key.first, h.pidfd.get(), h.cookies);
    if (!taken) {
      report.lines.push_back("pid " + std::to_string(key.first) + ": " + taken.error().message);
      continue;
    }
    for (auto& [cookie, fd] : *taken) inherited.sockets.try_emplace(cookie, std::move(fd));
  }
}

}  // namespace

void LeaseService::restore_leases(const journal::JournalState& st, Inheritance& inherited,
                                  RestoreReport& report) {
  registry_.set_next_id(st.next_id());
  // Which leases can come back: their session's connection survived, or their holder lives
  // (the same process: pid and start time), or they linger and their socket was passed on.
  std::map<std::pair<pid_t, uint64_t>, LiveHolder> holders;
  auto holder_of = [&](const journal::JournalLease& l) -> LiveHolder& {
    LiveHolder& h = holders[{l.holder.pid, l.holder_start_time}];
    if (!h.asked) {
      h.asked = true;
      h.pidfd = open_process(l.holder.pid, l.holder_start_time);
      h.alive = h.pidfd.valid();
    }
    return h;
  };
  auto socket_cookie_of = [&](const journal::JournalLease& l) {
    const journal::JournalBinding& b = st.bindings().at(l.binding);
    return b.mode == Mode::kReuseport ? l.cookie : b.cookie;
  };
  std::vector<const journal::JournalLease*> keep;
  std::vector<uint64_t> dropped;
  for (const auto& [id, l] : st.leases()) {
    const bool lingering = l.lingering_until_ms != 0;
    const bool connected = !lingering && sessions_.count(l.session) != 0;
    const bool passed_on = inherited.sockets.count(socket_cookie_of(l)) != 0;
    if (connected || (lingering && passed_on) || (!lingering && holder_of(l).alive)) {
      keep.push_back(&l);
      if (!passed_on && !lingering) holder_of(l).cookies.insert(socket_cookie_of(l));
    } else {
      ++report.dropped;
      dropped.push_back(id);
      report.lines.push_back(
          lease_line(l, st.bindings().at(l.binding)) +
          (lingering ? ": lingering, and its socket did not survive" : ": its holder is gone"));
    }
  }
  take_back_copies(holders, inherited, report);

  std::unordered_set<uint64_t> restored_bindings;
  std::map<uint64_t, OrphanSession> orphans;
  for (const journal::JournalLease* l : keep) {
    const journal::JournalBinding& jb = st.bindings().at(l->binding);
    if (restored_bindings.insert(jb.id).second) {
      registry_.restore_binding(Binding{jb.id, jb.endpoint, jb.mode, jb.options, jb.owner_uid, {}});
    }
    Lease lease{l->id,         l->binding,  l->name,  l->session,           l->holder,
                l->created_ms, l->linger_s, l->token, l->lingering_until_ms};
    registry_.restore_lease(std::move(lease));
    const uint64_t cookie = socket_cookie_of(*l);
    auto& table = jb.mode == Mode::kReuseport ? member_sockets_ : binding_sockets_;
    const uint64_t key = jb.mode == Mode::kReuseport ? l->id : jb.id;
    if (table.count(key) == 0) {
      if (auto fd = inherited.sockets.find(cookie); fd != inherited.sockets.end()) {
        table[key] = KeptSocket{std::move(fd->second), cookie};
        inherited.sockets.erase(fd);
      } else {
        ++report.without_copy;
        report.lines.push_back(lease_line(*l, jb) +
                               ": restored without the broker's copy of its socket");
      }
    }
    ++report.restored;
    const bool orphan = l->lingering_until_ms == 0 && sessions_.count(l->session) == 0;
    if (orphan && orphans.count(l->session) == 0) {
      LiveHolder& h = holders[{l->holder.pid, l->holder_start_time}];
      OrphanSession o{l->session, l->holder, UniqueFd(::dup(h.pidfd.get()))};
      Principal who;
      who.uid = l->holder.uid;
      who.gid = l->holder.gid;
      who.cgroup = l->holder.cgroup;
      sessions_[l->session] = Session{l->holder, who, o.pidfd.get(), l->holder_start_time};
      orphans.emplace(l->session, std::move(o));
    }
  }
  for (auto& [id, o] : orphans) report.orphans.push_back(std::move(o));
  // Last, as it changes `st`: a lease that did not come back has ended, or every later start
  // would find it in the journal and end it again.
  for (uint64_t id : dropped) record_or_warn(journal::LeaseEnded{id});
}

void LeaseService::adopt_holds(std::vector<UniqueFd> holds) {
  for (UniqueFd& fd : holds) {
    sockaddr_storage ss{};
    socklen_t len = sizeof(ss);
    int type = 0;
    socklen_t tlen = sizeof(type);
    if (::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&ss), &len) != 0 ||
        ::getsockopt(fd.get(), SOL_SOCKET, SO_TYPE, &type, &tlen) != 0) {
      continue;
    }
    HeldSocket h;
    uint16_t port = 0;
    if (ss.ss_family == AF_INET) {
      const auto* sin = reinterpret_cast<const sockaddr_in*>(&ss);
      port = ntohs(sin->sin_port);
      h.address.family = AF_INET;
      std::memcpy(h.address.bytes.data(), &sin->sin_addr, 4);
    } else {
      const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(&ss);
      port = ntohs(sin6->sin6_port);
      h.address.family = AF_INET6;
      std::memcpy(h.address.bytes.data(), &sin6->sin6_addr, 16);
      int v6only = 0;
      socklen_t vlen = sizeof(v6only);
      ::getsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &v6only, &vlen);
      h.v6only = v6only != 0;
    }
    const Protocol p = type == SOCK_STREAM ? Protocol::kTcp : Protocol::kUdp;
    int listening = 0;
    socklen_t llen = sizeof(listening);
    ::getsockopt(fd.get(), SOL_SOCKET, SO_ACCEPTCONN, &listening, &llen);
    h.parked = p == Protocol::kTcp && listening == 0;
    for (const Reservation* r : policy_.reservations_at(p, port)) {
      if (!r->hold) continue;
      if (!r->listen && p == Protocol::kTcp) {  // never listening by design, not parked
        h.parked = false;
        h.unlistened = true;
      }
      Held& entry = held_[port_key(p, port)];
      entry.reservation = r->name;
      h.fd = std::move(fd);
      entry.sockets.push_back(std::move(h));
      break;
    }
    // No reservation holds it any more: it leaves the fd store as it is closed.
    if (fd && fd_store_.enabled()) fd_store_.remove(hold_fd_name(socket_cookie(fd.get())));
  }
}

}  // namespace portbroker::broker
