// SPDX-License-Identifier: MIT
#include "config/config.hpp"

#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <string>
#include <unistd.h>

namespace dragon::config {
namespace {

class ConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/dragon-config-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { (void)std::system(("rm -rf " + dir_).c_str()); }

  std::string write(const std::string& name, const std::string& text) {
    const std::string path = dir_ + "/" + name;
    std::ofstream(path) << text;
    return path;
  }
  // Only the sources a test names: no /etc, no $HOME, no process environment.
  LoadOptions isolated() {
    LoadOptions o;
    o.systemFile.reset();
    o.userFile = dir_ + "/absent-user.yaml";
    o.useProcessEnvironment = false;
    return o;
  }
  Status loadError(const std::string& yaml) {
    LoadOptions o = isolated();
    o.explicitFile = write("c.yaml", yaml);
    auto c = Config::load(o);
    EXPECT_FALSE(c.has_value()) << "accepted:\n" << yaml;
    return c.has_value() ? Status::ok() : c.error();
  }
  std::string dir_;
};

TEST_F(ConfigTest, EveryDefaultInTheTableParses) {
  for (const KeySpec& k : keys()) {
    auto v = parseValue(k, k.defaultValue);
    EXPECT_TRUE(v.has_value()) << k.name << ": " << v.error().toString();
  }
  Config c = Config::defaults();
  EXPECT_EQ(c.getString("log_level"), "warn");
  EXPECT_EQ(c.getSize("pool.default_size"), std::uint64_t{256} << 20);
  EXPECT_EQ(c.getDurationNs("process.kill_grace"), 5'000'000'000);
  EXPECT_EQ(c.get("socket").source, "default");
}

TEST_F(ConfigTest, EnvironmentNamesFollowTheKeys) {
  EXPECT_EQ(envName("pool.default_size"), "DRAGON_POOL_DEFAULT_SIZE");
  EXPECT_EQ(envName("log_level"), "DRAGON_LOG_LEVEL");
}

TEST_F(ConfigTest, LaterLayersWinAndEachValueKnowsItsSource) {
  LoadOptions o = isolated();
  o.systemFile = write("system.yaml",
                       "log_level: error\nallow_root: yes\npool:\n  default_size: 1GiB\n"
                       "channel.capacity: 8\nprocess.kill_grace: 1s\n");
  o.userFile = write("user.yaml", "allow_root: no\npool:\n  default_size: 512MiB\n"
                                  "channel.capacity: 16\nprocess.kill_grace: 2s\n");
  o.explicitFile = write("explicit.yaml", "channel.capacity: 32\nprocess.kill_grace: 3s\n");
  o.environment = {{"DRAGON_PROCESS_KILL_GRACE", "4s"}, {"PATH", "/bin"}};
  o.overrides = {{"socket", "/run/x.sock", "--socket"}};
  auto c = Config::load(o);
  ASSERT_TRUE(c.has_value()) << c.error().toString();
  EXPECT_EQ(c->getString("log_level"), "error");
  EXPECT_EQ(c->get("log_level").source, dir_ + "/system.yaml:1:12");
  EXPECT_FALSE(c->getBool("allow_root"));
  EXPECT_EQ(c->getSize("pool.default_size"), std::uint64_t{512} << 20);
  EXPECT_EQ(c->get("pool.default_size").source, dir_ + "/user.yaml:3:17");
  EXPECT_EQ(c->getInt("channel.capacity"), 32);
  EXPECT_EQ(c->getDurationNs("process.kill_grace"), 4'000'000'000);
  EXPECT_EQ(c->get("process.kill_grace").source, "environment DRAGON_PROCESS_KILL_GRACE");
  EXPECT_EQ(c->getString("socket"), "/run/x.sock");
  EXPECT_EQ(c->get("socket").source, "--socket");
  EXPECT_EQ(c->get("pool.prefault").source, "default");
}

TEST_F(ConfigTest, UnknownKeyNamesFileLineAndTheLikelyKey) {
  Status st = loadError("log_level: info\npool:\n  defualt_size: 1GiB\n");
  EXPECT_EQ(st.code(), StatusCode::InvalidArgument);
  EXPECT_NE(st.toString().find("c.yaml:3:3: unknown key 'pool.defualt_size' (did you mean "
                               "'pool.default_size'?)"),
            std::string::npos)
      << st.toString();
  EXPECT_NE(loadError("frobnicate: 1\n").toString().find("unknown key 'frobnicate'"),
            std::string::npos);
}

TEST_F(ConfigTest, WrongTypesAndBadSizesAreErrorsNamingFileLineAndKey) {
  EXPECT_NE(loadError("allow_root: maybe\n").toString().find(
                "c.yaml:1:13: key 'allow_root': 'maybe' is not a boolean"),
            std::string::npos);
  EXPECT_NE(loadError("pool:\n  default_size: 12XB\n").toString().find(
                "c.yaml:2:17: key 'pool.default_size': '12XB' has an unknown size unit 'XB'"),
            std::string::npos);
  EXPECT_NE(loadError("pool.default_size: lots\n").toString().find("is not a size"),
            std::string::npos);
  EXPECT_NE(loadError("pool.default_size: 1KiB\n").toString().find("outside 64KiB .. 1TiB"),
            std::string::npos);
  EXPECT_NE(loadError("channel.capacity: 0\n").toString().find("outside 1 .. 16777216"),
            std::string::npos);
  EXPECT_NE(loadError("channel.capacity: 1.5\n").toString().find("not a whole number"),
            std::string::npos);
  EXPECT_NE(loadError("process.kill_grace: 5\n").toString().find("not a duration"),
            std::string::npos);
  EXPECT_NE(loadError("process.kill_grace: 5 fortnights\n").toString().find("unknown time unit"),
            std::string::npos);
  EXPECT_NE(loadError("log_level: chatty\n").toString().find(
                "'chatty' is not one of debug|info|warn|error|off"),
            std::string::npos);
  EXPECT_NE(loadError("pool.default_size: 99999999999999999999TiB\n").toString().find("outside"),
            std::string::npos);
}

TEST_F(ConfigTest, MalformedFilesAreClearErrors) {
  EXPECT_NE(loadError("pool: [unclosed\n").toString().find("YAML syntax error"),
            std::string::npos);
  EXPECT_NE(loadError("- a\n- b\n").toString().find("must be a mapping"), std::string::npos);
  EXPECT_NE(loadError("log_level: info\nlog_level: debug\n").toString().find(
                "c.yaml:2:1: key 'log_level' is given twice"),
            std::string::npos);
  EXPECT_NE(loadError("log_level:\n").toString().find("has no value"), std::string::npos);
  EXPECT_NE(loadError("log_level: [a, b]\n").toString().find("not a list"), std::string::npos);
  EXPECT_NE(loadError("pool: 5\n").toString().find("'pool' is a section"), std::string::npos);
  EXPECT_NE(loadError("log_level:\n  deep: 1\n").toString().find("takes a value, not a mapping"),
            std::string::npos);
  EXPECT_NE(loadError("? [a, b]\n: 1\n").toString().find("plain names"), std::string::npos);
  EXPECT_NE(loadError("\t\x01\xff: x\n").code(), StatusCode::Ok);
  // A second document would be ignored: an error naming where it starts.
  EXPECT_NE(loadError("log_level: info\n---\npool.default_size: 1GiB\n").toString().find(
                "c.yaml:3:1: a configuration file is one YAML document (this is its second)"),
            std::string::npos);
}

TEST_F(ConfigTest, AConfigurationPathThatIsADirectoryIsAnError) {
  LoadOptions o = isolated();
  o.explicitFile = dir_;
  auto c = Config::load(o);
  ASSERT_FALSE(c.has_value()) << "a directory read as an empty file";
  EXPECT_NE(c.error().toString().find(dir_ + " is a directory"), std::string::npos)
      << c.error().toString();
  o.explicitFile = "/dev/null";  // not a regular file, but read as an empty one
  EXPECT_TRUE(Config::load(o).has_value());
}

TEST_F(ConfigTest, MissingOptionalFilesAreFineAMissingExplicitOneIsNot) {
  LoadOptions o = isolated();
  o.systemFile = dir_ + "/nope.yaml";
  EXPECT_TRUE(Config::load(o).has_value());
  o.explicitFile = dir_ + "/also-nope.yaml";
  auto c = Config::load(o);
  ASSERT_FALSE(c.has_value());
  EXPECT_NE(c.error().toString().find("also-nope.yaml: No such file"), std::string::npos);
  o.explicitFile = write("empty.yaml", "");
  EXPECT_TRUE(Config::load(o).has_value()) << "an empty file sets nothing";
}

TEST_F(ConfigTest, EnvironmentErrorsNameTheVariableAndStrangersAreWarnings) {
  LoadOptions o = isolated();
  o.environment = {{"DRAGON_CHANNEL_CAPACITY", "many"}};
  auto c = Config::load(o);
  ASSERT_FALSE(c.has_value());
  EXPECT_NE(c.error().toString().find(
                "environment DRAGON_CHANNEL_CAPACITY: key 'channel.capacity': 'many'"),
            std::string::npos);
  // Variables that the launcher or the Python layer read (DRAGON_PYTHON, DRAGON_PLACEMENT...)
  // are not configuration keys, and no strangers either.
  o.environment = {{"DRAGON_KILL_LOOP_SEED", "7"}, {"DRAGON_LOG_LEVEL", "debug"},
                   {"DRAGON_PYTHON", "/usr/bin/python3"}, {"DRAGON_DAEMON", "/usr/bin/dragond"},
                   {"DRAGON_PLACEMENT", "local"}, {"DRAGON_MODULE_DIR", "/opt/dragon"}};
  c = Config::load(o);
  ASSERT_TRUE(c.has_value());
  EXPECT_EQ(c->getString("log_level"), "debug");
  ASSERT_EQ(c->warnings().size(), 1u);
  EXPECT_NE(c->warnings()[0].find("DRAGON_KILL_LOOP_SEED"), std::string::npos);
}

TEST_F(ConfigTest, ANodeTimeoutShorterThanTwoHeartbeatsIsAnErrorNamingBoth) {
  LoadOptions o = isolated();
  o.environment = {{"DRAGON_CLUSTER_HEARTBEAT_INTERVAL", "2s"}};
  auto c = Config::load(o);
  ASSERT_FALSE(c.has_value());
  EXPECT_NE(c.error().toString().find(
                "default: key 'cluster.node_timeout' (1500 ms) must be at least twice "
                "cluster.heartbeat_interval (2000 ms, from environment "
                "DRAGON_CLUSTER_HEARTBEAT_INTERVAL)"),
            std::string::npos)
      << c.error().toString();
  o.environment.emplace_back("DRAGON_CLUSTER_NODE_TIMEOUT", "4s");
  c = Config::load(o);
  ASSERT_TRUE(c.has_value()) << c.error().toString();
  EXPECT_EQ(c->getDurationNs("cluster.node_timeout"), 4'000'000'000);
}

TEST_F(ConfigTest, CommandLineOverridesAreCheckedLikeEverythingElse) {
  LoadOptions o = isolated();
  o.overrides = {{"log_levle", "info", "--set"}};
  auto c = Config::load(o);
  ASSERT_FALSE(c.has_value());
  EXPECT_NE(c.error().toString().find("--set: unknown key 'log_levle' (did you mean 'log_level'?)"),
            std::string::npos);
  o.overrides = {{"log_level", "loud", "--log-level"}};
  EXPECT_NE(Config::load(o).error().toString().find("--log-level: key 'log_level': 'loud'"),
            std::string::npos);
}

TEST_F(ConfigTest, PrintedConfigurationLoadsBackUnchanged) {
  LoadOptions o = isolated();
  o.overrides = {{"socket", "/tmp/a \"quoted\" dir/s.sock", "--socket"},
                 {"process.kill_grace", "250ms", "--grace"},
                 {"channel.inline_size", "1000", "--inline"},
                 {"allow_root", "on", "--allow-root"}};
  auto first = Config::load(o);
  ASSERT_TRUE(first.has_value()) << first.error().toString();
  const std::string printed = first->print();
  EXPECT_NE(printed.find("process.kill_grace: 250ms  # --grace"), std::string::npos) << printed;
  LoadOptions again = isolated();
  again.explicitFile = write("printed.yaml", printed);
  auto second = Config::load(again);
  ASSERT_TRUE(second.has_value()) << second.error().toString() << "\n" << printed;
  for (const KeySpec& k : keys()) {
    EXPECT_EQ(first->get(k.name).number, second->get(k.name).number) << k.name;
    EXPECT_EQ(first->get(k.name).text, second->get(k.name).text) << k.name;
  }
}

TEST_F(ConfigTest, SizesAndDurationsFormatInTheirLargestExactUnit) {
  const KeySpec* size = findKey("pool.default_size");
  const KeySpec* dur = findKey("process.kill_grace");
  ASSERT_NE(size, nullptr);
  ASSERT_NE(dur, nullptr);
  EXPECT_EQ(formatValue(*size, *parseValue(*size, "268435456")), "256MiB");
  EXPECT_EQ(formatValue(*size, *parseValue(*size, "65537K")), "65537KiB");
  EXPECT_EQ(formatValue(*dur, *parseValue(*dur, "90s")), "90s");
  EXPECT_EQ(formatValue(*dur, *parseValue(*dur, "120s")), "2m");
  EXPECT_EQ(parseValue(*dur, "1500us")->number, 1'500'000);
}

}  // namespace
}  // namespace dragon::config
