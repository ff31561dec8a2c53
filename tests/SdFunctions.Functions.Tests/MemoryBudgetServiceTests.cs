using System.Text.Json;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;
using SdFunctions.Jobs;

using static SdFunctions.Functions.Tests.ApiAnswers;

namespace SdFunctions.Functions.Tests;

/// <summary>Model:MemoryBudget: the plan the instance chose (health), the tiles it decodes in, and each job's peak memory.</summary>
[Collection(AzuriteCollection.Name)]
public class MemoryBudgetServiceTests
{
    [Fact]
    public async Task AnUnreachableBudgetTilesEveryFullDecodeAndTheJobRecordsItsPeak()
    {
        await using var app = await TestApp.StartAsync(configure: s => s["Model:MemoryBudget"] = "1MB"); // less than the runtime alone
        var job = await app.RunJobAsync("""{"prompt": "a fox", "steps": 2, "seed": 4, "scheduler": "ddim", "tiledDecode": false}""");
        Assert.Equal("succeeded", job.GetProperty("status").GetString());
        var output = job.GetProperty("output");
        Assert.Equal(64, output.GetProperty("decodeTileSize").GetInt32()); // the smallest tile: the budget wins over tiledDecode: false
        Assert.InRange(output.GetProperty("peakMemoryBytes").GetInt64(), 50_000_000, 24L << 30); // a .NET process with ORT sessions, under the machine

        var memory = (await app.HealthAsync()).GetProperty("memory");
        Assert.Equal(1_000_000, memory.GetProperty("budgetBytes").GetInt64());
        Assert.Equal(64, memory.GetProperty("decodeTileSize").GetInt32());
        Assert.False(memory.GetProperty("met").GetBoolean());
        Assert.True(memory.GetProperty("expectedPeakBytes").GetInt64() > 1_000_000);
    }

    [Fact]
    public async Task WithoutABudgetHealthShowsNoPlanAndJobsStillRecordTheirPeak()
    {
        await using var app = await TestApp.StartAsync();
        var output = (await app.RunJobAsync("""{"prompt": "a fox", "steps": 2, "seed": 4, "scheduler": "ddim"}""")).GetProperty("output");
        Assert.False(output.TryGetProperty("decodeTileSize", out _));
        Assert.True(output.GetProperty("peakMemoryBytes").GetInt64() > 0);
        Assert.Equal(JsonValueKind.Null, (await app.HealthAsync()).GetProperty("memory").ValueKind);
    }

    [Theory]
    [InlineData("lots")]
    [InlineData("-2GB")]
    [InlineData("1.5XB")]
    public void ABadBudgetStopsTheAppAtStart(string budget)
    {
        var app = new TestApp(configure: s => s["Model:MemoryBudget"] = budget);
        var e = Assert.Throws<OptionsValidationException>(() => app.Services.GetRequiredService<IOptions<ModelOptions>>().Value);
        Assert.Contains("Model__MemoryBudget", e.Message);
    }
}
